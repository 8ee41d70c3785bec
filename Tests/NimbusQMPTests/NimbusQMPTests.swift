// Tests of NimbusQMP.
