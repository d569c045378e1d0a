import sys

try:
    from reliability.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command line loads: stop, quietly
    sys.exit(130)

main(prog_name="reliability")  # as the installed command: its usage lines and completion
