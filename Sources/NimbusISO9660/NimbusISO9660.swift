// NimbusISO9660: see ../../../shared/DESIGN.md for what this module owns.
