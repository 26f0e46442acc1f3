"""Profiles as data: samples from py-spy's speedscope files and Node's .cpuprofile, the
top functions by self and total time, and an SVG flame graph. Pure (no processes), but for
`inspector.py`, the small tool that samples a Node process through its inspector."""
