"""The command line: parsing, output, wiring. No logic beyond that; never touches a process."""
