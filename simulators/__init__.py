"""Real protocol servers of the instruments calgate reads, with fault injection.

They share no code with ``drivers`` (a bug must not hide on both sides of a wire) and
import nothing from calgate.
"""
