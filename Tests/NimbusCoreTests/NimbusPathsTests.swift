import Foundation
import NimbusCore
import Testing

@Suite("Where state lives")
struct NimbusPathsTests {
    @Test("NIMBUS_HOME puts data, cache and config under one folder")
    func nimbusHome() {
        let paths = NimbusPaths.resolve(environment: ["NIMBUS_HOME": "/tmp/nh", "XDG_DATA_HOME": "/x"])
        #expect(paths.data.path == "/tmp/nh/data")
        #expect(paths.cache.path == "/tmp/nh/cache")
        #expect(paths.configFile.path == "/tmp/nh/config/config.yaml")
        #expect(paths.instances.path == "/tmp/nh/data/instances")
        #expect(paths.images.path == "/tmp/nh/cache/images")
    }

    @Test("without NIMBUS_HOME the XDG variables apply, relative ones are ignored")
    func xdg() {
        let paths = NimbusPaths.resolve(environment: [
            "HOME": "/home/u", "XDG_DATA_HOME": "/d", "XDG_CACHE_HOME": "relative",
        ])
        #expect(paths.data.path == "/d/nimbus")
        #expect(paths.cache.path == "/home/u/.cache/nimbus")
        #expect(paths.config.path == "/home/u/.config/nimbus")
    }
}
