import NimbusCommands

/// The executable only starts the command tree, which lives in NimbusCommands where the tests reach it.
@main
extension NimbusCommand {}
