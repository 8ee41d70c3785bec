// Tests of NimbusDisks.
