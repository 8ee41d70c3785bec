/// What `nimbus --version` says about the build beyond the version: the commit it was built from.
///
/// `scripts/build` (which `make release`, `make install` and `make deb` run) writes the commit into
/// `BuildCommit.generated.swift` beside this file, ignored by git, as `extension BuildInfo { static let commit =
/// "…" }`. A member declared on the type itself is chosen over the protocol extension's default below, so a
/// plain `swift build` without that file (a tarball, a user not using make) still compiles, and says
/// "unknown". SwiftPM plugins cannot run git in their sandbox, hence a file written before the build.
public enum BuildInfo: BuildInfoDefaults {}

/// The defaults `BuildInfo`'s generated extension overrides.
public protocol BuildInfoDefaults {}

extension BuildInfoDefaults {
    /// The abbreviated commit hash, with `-dirty` when tracked files differed from it; "unknown" outside git.
    public static var commit: String { "unknown" }
}
