"""The example lab: gateway configs and a calibration registry whose chains end at an NMI."""
