"""Shared groundwork with no graphinterp imports: errors, files, devices, floating point, seeds, parallel and distributed execution."""
