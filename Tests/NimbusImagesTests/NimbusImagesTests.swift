// Tests of NimbusImages.
