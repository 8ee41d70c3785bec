/// The 32-bit FNV-1a hash: stable across runs and platforms, unlike `Hasher`, for names derived from names
/// (MAC addresses, bridge names).
public func fnv1a32(_ text: String) -> UInt32 {
    var hash: UInt32 = 2_166_136_261
    for byte in text.utf8 {
        hash ^= UInt32(byte)
        hash = hash &* 16_777_619
    }
    return hash
}
