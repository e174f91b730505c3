from livesnap.cli import main

main()
