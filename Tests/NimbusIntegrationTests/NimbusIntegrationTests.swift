// Tests of NimbusIntegration.
