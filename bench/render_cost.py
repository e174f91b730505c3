"""CPU per capture of livesnap's picture options, as ratios to plain JPEG at the source size.

Decodes the keyframes of a 1080p25 H.264 clip (x264, testsrc2, GOP 2 s; generated once with
ffmpeg and cached under .cache/bench/) and renders each through ``capture.render.Renderer``
with every option set below, interleaved round by round so that machine noise hits every
variant alike. Reports CPU milliseconds per capture (``time.process_time``, one thread) and
the ratio to the baseline, ``jpg`` at the source size without the quality gate, measured in
the same run.

    .venv/bin/python bench/render_cost.py              # 1080p, 5 rounds
    .venv/bin/python bench/render_cost.py --rounds 1 --json
    .venv/bin/python bench/render_cost.py --expansion   # range expansion: banded vs whole planes

``--expansion`` times the limited → full range expansion of the three planes right after each
keyframe's decode (as a capture runs it, with the frame fresh from the decoder): livesnap's
banded passes (``capture.encode._expand``) against the same four numpy passes over whole
planes, interleaved, and prints their ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

from livesnap.capture import encode
from livesnap.capture.render import Renderer
from livesnap.jobs.models import ImageFormat, ImageOptions

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"

VARIANTS: dict[str, ImageOptions] = {
    "jpg (baseline)": ImageOptions(quality_gate=False),
    "jpg + gate": ImageOptions(),
    "jpg 1280 wide": ImageOptions(quality_gate=False, width=1280),
    "jpg 640 wide": ImageOptions(quality_gate=False, width=640),
    "jpg 320 wide": ImageOptions(quality_gate=False, width=320),
    "webp": ImageOptions(quality_gate=False, format=ImageFormat.WEBP),
    "webp 640 wide": ImageOptions(quality_gate=False, format=ImageFormat.WEBP, width=640),
    "png 640 wide": ImageOptions(quality_gate=False, format=ImageFormat.PNG, width=640),
}


def clip(resolution: str, seconds: int) -> Path:
    path = CACHE / f"render-{resolution}-{seconds}s.flv"
    if path.exists():
        return path
    ffmpeg = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flv")
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={resolution}:rate=25:duration={seconds}", "-c:v", "libx264",
         "-g", "50", "-pix_fmt", "yuv420p", "-f", "flv", str(tmp)],
        check=True,
    )  # fmt: skip
    tmp.rename(path)
    return path


def keyframes(path: Path) -> list[av.VideoFrame]:
    """Every keyframe of the clip, decoded as the capture engine decodes one."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        for frame in container.decode(stream):
            frames.append(frame)
    return frames


def measure(frames: list[av.VideoFrame], rounds: int) -> dict[str, float]:
    """Median CPU ms per capture for each variant over ``rounds`` interleaved rounds."""
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, options in VARIANTS.items():
            renderer = Renderer(options)
            start = time.process_time()
            for frame in frames:
                if renderer.render(frame).image is None:
                    raise RuntimeError(f"{name}: the gate rejected a test-pattern frame")
            samples[name].append((time.process_time() - start) * 1000 / len(frames))
    return {name: statistics.median(values) for name, values in samples.items()}


def keyframe_packets(path: Path) -> tuple[str, bytes | None, list[bytes]]:
    """The clip's codec, its extradata and its keyframe packets (to decode each afresh)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [bytes(p) for p in container.demux(stream) if p.is_keyframe and p.size]
        return stream.codec_context.name, stream.codec_context.extradata, packets


def whole_plane_expand(
    plane: np.ndarray, params: tuple[int, int, int, int]
) -> np.ndarray:
    """The reference: the four passes of ``encode._expand`` over the whole plane at once."""
    low, high, mul, sub = params
    out = np.clip(plane, low, high)
    wide = np.multiply(out, mul, dtype=np.uint16)
    wide -= sub
    np.right_shift(wide, 8, out=out, casting="unsafe")
    return out


def measure_expansion(path: Path, rounds: int) -> dict[str, float]:
    """Median CPU ms per frame of each expansion, each frame fresh from a new decoder."""
    codec, extradata, packets = keyframe_packets(path)
    variants = {"banded (livesnap)": encode._expand, "whole planes": whole_plane_expand}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, expand in variants.items():
            spent = 0.0
            for data in packets:
                decoder = av.CodecContext.create(codec, "r")
                decoder.extradata = extradata
                decoder.thread_type, decoder.thread_count = "NONE", 1
                frame = (decoder.decode(av.Packet(data)) + decoder.decode(None))[0]
                planes = [encode.plane_view(plane) for plane in frame.planes[:3]]
                start = time.process_time()
                expand(planes[0], encode._LUMA_EXPANSION)
                expand(planes[1], encode._CHROMA_EXPANSION)
                expand(planes[2], encode._CHROMA_EXPANSION)
                spent += time.process_time() - start
            samples[name].append(spent * 1000 / len(packets))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="1920x1080")
    parser.add_argument("--seconds", type=int, default=20, help="clip length (10 keyframes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--expansion", action="store_true",
                        help="time the range expansion, banded against whole planes")
    args = parser.parse_args(argv)
    if args.expansion:
        costs = measure_expansion(clip(args.resolution, args.seconds), args.rounds)
        whole = costs["whole planes"]
        for name, ms in costs.items():
            print(f"{name:<18} {ms:>6.2f} ms/frame {ms / whole:>6.2f}x whole planes")
        return 0
    frames = keyframes(clip(args.resolution, args.seconds))
    costs = measure(frames, args.rounds)
    base = costs["jpg (baseline)"]
    result = {
        "resolution": args.resolution, "keyframes": len(frames), "rounds": args.rounds,
        "ms_per_capture": {k: round(v, 2) for k, v in costs.items()},
        "ratio_to_baseline": {k: round(v / base, 2) for k, v in costs.items()},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(frames)} keyframes of {args.resolution}, {args.rounds} rounds")
        print(f"{'variant':<18} {'CPU ms/capture':>15} {'x baseline':>11}")
        for name, ms in costs.items():
            print(f"{name:<18} {ms:>15.2f} {ms / base:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
