import ArgumentParser
import NimbusCore
import NimbusInstances
import NimbusMachines

/// A network name argument, checked by the parser.
struct NetworkNameArgument: ParsableArguments {
    @Argument(help: "The network's name (a DNS label: a-z, 0-9, '-').")
    var name: String

    func validate() throws {
        try validating { try NetworkSpec.checkName(name) }
    }
}
