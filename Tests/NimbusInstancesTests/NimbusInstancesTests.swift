// Tests of NimbusInstances.
