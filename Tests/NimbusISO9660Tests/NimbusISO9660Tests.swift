// Tests of NimbusISO9660.
