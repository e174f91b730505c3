"""HTML form bodies and the template editor's fields.

Forms are posted as ``application/x-www-form-urlencoded`` (the default ``enctype``), parsed
here with a size cap so that the console needs no multipart parser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl

from starlette.requests import Request

from livesnap.errors import LivesnapError
from livesnap.jobs import imaging, naming
from livesnap.jobs.manager import check_template_spec
from livesnap.jobs.models import (
    ConnectMode,
    ImageChanges,
    ImageFormat,
    JobSpec,
    StorageTarget,
    StorageType,
    Template,
    TemplateSpec,
)
from livesnap.jobs.storage import check_target

MAX_FORM_BYTES = 64 * 1024


class FormError(Exception):
    """The body is not a form this console sent (too large, not urlencoded, not UTF-8)."""


async def read_form(request: Request) -> dict[str, str]:
    """The first value of each field of an urlencoded body."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise FormError("expected an urlencoded form")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormError("the form is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False,
                          max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError("the form is malformed") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


_VALID = TemplateSpec(name="valid", interval_s=5, overwrite_format="snapshot/{JobId}.jpg",
                      sequence_format=None)


@dataclass(kw_only=True)
class TemplateForm:
    """The editor's values as typed, and an error message per field (``""``: the form)."""

    name: str = ""
    interval: str = "5"
    overwrite_format: str = "snapshot/{JobId}.jpg"
    sequence_format: str = "snapshot/{JobId}/{UnixTimestamp}.jpg"
    # livesnap's image extensions (docs/api.md, "Extensions")
    image_format: str = ImageFormat.JPG.value
    quality: str = ""  # empty: the node's default
    width: str = "0"
    height: str = "0"
    quality_gate: bool = False
    latest_pointer: bool = False
    connect_mode: str = ConnectMode.AUTO.value
    errors: dict[str, str] = field(default_factory=dict)

    FORMATS = tuple(f.value for f in ImageFormat)
    MODES = tuple(m.value for m in ConnectMode)

    @classmethod
    def from_form(cls, form: dict[str, str]) -> TemplateForm:
        def value(name: str) -> str:
            return form.get(name, "").strip()

        # an unticked checkbox is not sent at all
        return cls(name=value("name"), interval=value("interval"),
                   overwrite_format=value("overwrite_format"),
                   sequence_format=value("sequence_format"),
                   image_format=value("image_format") or ImageFormat.JPG.value,
                   quality=value("quality"), width=value("width") or "0",
                   height=value("height") or "0",
                   quality_gate="quality_gate" in form, latest_pointer="latest_pointer" in form,
                   connect_mode=value("connect_mode") or ConnectMode.AUTO.value)

    @classmethod
    def from_template(cls, template: Template) -> TemplateForm:
        image = template.image
        return cls(
            name=template.name,
            interval=str(template.interval_s),
            overwrite_format=template.overwrite_format or "",
            sequence_format=template.sequence_format or "",
            image_format=image.format.value,
            quality="" if image.quality is None else str(image.quality),
            width=str(image.width),
            height=str(image.height),
            quality_gate=image.quality_gate,
            latest_pointer=image.latest_pointer,
            connect_mode=template.connect_mode.value,
        )

    def validate(self) -> TemplateSpec | None:
        """The spec to save, or None with an error for every field that is wrong.

        The manager's check stops at the first problem, so each field is also checked on
        its own (the rest taken from a valid spec) to mark all wrong fields at once.
        """
        spec = self._spec()
        self._check("overwrite_format", naming.check_overwrite_format)
        self._check("sequence_format", naming.check_sequence_format)
        if self.image_format in self.FORMATS:
            fmt = ImageFormat(self.image_format)
            self._check("overwrite_format",
                        lambda v: imaging.check_extension("OverwriteFormat", v, fmt))
            self._check("sequence_format",
                        lambda v: imaging.check_extension("SequenceFormat", v, fmt))
        if spec is not None:
            # once with only the name, once with only the interval from the form, then whole
            self._check_spec(replace(_VALID, name=spec.name))
            self._check_spec(replace(_VALID, interval_s=spec.interval_s))
            self._check_spec(spec)
        return None if self.errors else spec

    def _check(self, name: str, check: Callable[[str], None]) -> None:
        value = getattr(self, name)
        if not value:
            return
        try:
            check(value)
        except LivesnapError as exc:
            self.errors[name] = exc.message

    def _check_spec(self, spec: TemplateSpec) -> None:
        try:
            check_template_spec(spec)
        except LivesnapError as exc:
            self.add_error(exc.message)

    def _spec(self) -> TemplateSpec | None:
        try:
            interval = int(self.interval)
        except ValueError:
            self.errors["interval"] = "Enter a whole number of seconds between 5 and 3600."
        image = self._image()
        if self.connect_mode not in self.MODES:
            self.errors["connect_mode"] = f"Choose one of: {', '.join(self.MODES)}."
        if self.errors or image is None:
            return None
        return TemplateSpec(
            name=self.name,
            interval_s=interval,
            overwrite_format=self.overwrite_format or None,
            sequence_format=self.sequence_format or None,
            image=image,
            connect_mode=ConnectMode(self.connect_mode),
        )

    def _image(self) -> ImageChanges | None:
        if self.image_format not in self.FORMATS:
            self.errors["image_format"] = f"Choose one of: {', '.join(self.FORMATS)}."
            return None
        numbers: dict[str, int | None] = {}
        for name, hint in (("quality", "1 to 100, or empty for the default"),
                           ("width", "0 or 32 to 7680"), ("height", "0 or 32 to 7680")):
            text = getattr(self, name)
            try:
                numbers[name] = int(text) if text else None
            except ValueError:
                self.errors[name] = f"Enter a whole number: {hint}."
        if len(numbers) < 3:
            return None
        return ImageChanges(format=ImageFormat(self.image_format), quality=numbers["quality"],
                            width=numbers["width"] or 0, height=numbers["height"] or 0,
                            quality_gate=self.quality_gate, latest_pointer=self.latest_pointer)

    def add_error(self, message: str) -> None:
        """Put a manager's validation message next to the field it is about."""
        self.errors.setdefault(field_for_message(message), message)


# the manager's messages name the ICE parameter they are about (jobs/manager.py, jobs/naming.py)
_MESSAGE_FIELDS = (
    ("At least one of", "formats"),
    ("TemplateName", "name"),
    ("TimeInterval", "interval"),
    ("OverwriteFormat", "overwrite_format"),
    ("SequenceFormat", "sequence_format"),
    ("LatestPointer", "latest_pointer"),
    ("Quality", "quality"),
    ("Width", "width"),
    ("Height", "height"),
)


def field_for_message(
    message: str, fields: tuple[tuple[str, str], ...] = _MESSAGE_FIELDS
) -> str:
    """Which form field a validation message belongs to (``""``: the whole form), by the
    first of ``fields`` (marker, field name) whose marker the message contains."""
    for marker, name in fields:
        if marker in message:
            return name
    return ""


# A message from the manager names the field it is about by its API parameter (the more
# specific before the less).
_JOB_FIELDS = (("StreamInput", "stream_url"), ("CallbackUrl", "callback_url"),
               ("SnapshotOutput.Endpoint", "endpoint"), ("SnapshotOutput.Bucket", "bucket"),
               ("SnapshotOutput", "storage_type"), ("JobName", "name"),
               ("Template", "template_id"))
STORAGE_TYPES = tuple(t.value for t in StorageType)


@dataclass(kw_only=True)
class JobForm:
    """The New job form's values as typed, and an error message per field (``""``: the form).
    Validation is the manager's, as for SubmitLiveSnapshotJob."""

    name: str = ""
    stream_url: str = ""
    template_id: str = "system"
    storage_type: str = StorageType.LOCAL.value
    endpoint: str = "console"
    bucket: str = "snapshots"
    callback_url: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_form(cls, form: dict[str, str]) -> JobForm:
        def value(name: str) -> str:
            return form.get(name, "").strip()

        return cls(name=value("name"), stream_url=value("stream_url"),
                   template_id=value("template_id") or "system",
                   storage_type=value("storage_type") or StorageType.LOCAL.value,
                   endpoint=value("endpoint"), bucket=value("bucket"),
                   callback_url=value("callback_url"))

    def spec(self) -> JobSpec | None:
        """The job to submit, or None with the fields that are missing marked."""
        for name, label in (("name", "A name"), ("stream_url", "The stream URL"),
                            ("endpoint", "The endpoint"), ("bucket", "The bucket")):
            if not getattr(self, name):
                self.errors[name] = f"{label} is needed."
        if self.storage_type not in STORAGE_TYPES:
            self.errors["storage_type"] = "Choose oss, s3 or local."
        if self.errors:
            return None
        target = StorageTarget(storage_type=StorageType(self.storage_type),
                               endpoint=self.endpoint, bucket=self.bucket)
        try:
            check_target(target)
        except LivesnapError as exc:
            self.add_error(exc.message)
            return None
        return JobSpec(name=self.name, template_id=self.template_id,
                       stream_url=self.stream_url, stream_type="rtmp", storage=target,
                       callback_url=self.callback_url or None)

    def add_error(self, message: str) -> None:
        """Put a manager's message next to the field it names (else on the form)."""
        self.errors.setdefault(field_for_message(message, _JOB_FIELDS), message)
