import Foundation
import NimbusCore
import NimbusISO9660
import Yams

/// The seed volumes other platforms give cloud-init, made from the same rendered NoCloud files, so one
/// personality reaches a guest on OpenStack and on VMware as it does under Nimbus.
///
/// - ``configDrive(timestamp:)``: OpenStack's config drive v2, an ISO labelled `config-2` holding
///   `openstack/latest/meta_data.json` (`uuid` = the instance-id, `hostname`, `public_keys`), `user_data`
///   as it is, `vendor_data.json` (`{"cloud-init": vendor-data}`) and, when the network-config names
///   interfaces, `network_data.json` (links by MAC, one network per DHCP or address).
/// - ``ovfEnvironment(timestamp:)``: VMware's OVF environment on an ISO (the `iso` transport), labelled
///   `OVF-TRANSPORT`, holding `ovf-env.xml` with cloud-init's keys: `instance-id`, `hostname`, one
///   `public-keys`, `user-data` (base64; the OVF datasource has no vendor-data, so vendor-data and user-data
///   go as the two parts of a MIME multipart, user-data last so it wins as it does over vendor-data) and
///   `network-config` (base64 of the document under a `network:` key).
///
/// What each datasource reads was checked against cloud-init 22.4's code (docs/research/seed-formats-issue-18.md).
extension NoCloudSeed {
    /// The fields of meta-data other formats carry.
    struct MetaData {
        var instanceID: String
        var hostname: String?
        var publicKeys: [String]
    }

    func parsedMetaData() throws(SeedError) -> MetaData {
        let text = String(decoding: metaData, as: UTF8.self)
        guard case .mapping(let mapping)? = try YAML.parse(text, file: "meta-data") else {
            throw .invalidValue("meta-data is not a mapping: give instance-id and local-hostname")
        }
        guard let id = mapping[YAML.string("instance-id")]?.string, !id.isEmpty else {
            throw .invalidValue("meta-data has no instance-id, which every datasource needs: add one")
        }
        var keys: [String] = []
        switch mapping[YAML.string("public-keys")] {
        case .scalar(let scalar)?: keys = scalar.string.split(separator: "\n").map(String.init)
        case .sequence(let sequence)?: keys = sequence.compactMap(\.string)
        default: break
        }
        return MetaData(instanceID: id, hostname: mapping[YAML.string("local-hostname")]?.string, publicKeys: keys)
    }

    /// The network-config as a version 2 document (a `network:` key unwrapped); nil for a document that
    /// names no version (the fallback Nimbus writes when no NIC is given).
    func networkDocument() throws(SeedError) -> Node.Mapping? {
        let text = String(decoding: networkConfig, as: UTF8.self)
        guard case .mapping(var document)? = try YAML.parse(text, file: "network-config") else { return nil }
        if case .mapping(let inner)? = document[YAML.string("network")] { document = inner }
        guard let version = document[YAML.string("version")]?.int else { return nil }
        guard version == 2 else {
            throw .invalidValue(
                "network-config version \(version) cannot be carried by this seed format: write it as version 2")
        }
        return document
    }

    /// The version 2 document's `ethernets`, in document order.
    func ethernets(of document: Node.Mapping) -> [(id: String, settings: Node.Mapping)] {
        guard case .mapping(let ethernets)? = document[YAML.string("ethernets")] else { return [] }
        return ethernets.compactMap { key, value in
            guard let id = key.string, case .mapping(let settings) = value else { return nil }
            return (id, settings)
        }
    }

    // MARK: Config drive

    /// The config drive v2 volume (`config-2`).
    public func configDrive(timestamp: Date) throws(SeedError) -> ISO9660Image {
        let meta = try parsedMetaData()
        var metaJSON: [String: Any] = ["uuid": meta.instanceID]
        if let hostname = meta.hostname { metaJSON["hostname"] = hostname }
        if !meta.publicKeys.isEmpty {
            var keys: [String: String] = [:]
            for (index, key) in meta.publicKeys.enumerated() { keys["key\(index)"] = key }
            metaJSON["public_keys"] = keys
        }
        var files: [ISO9660Image.File] = [
            .init(name: "openstack/latest/meta_data.json", contents: try Self.json(metaJSON)),
            .init(name: "openstack/latest/user_data", contents: userData),
            .init(
                name: "openstack/latest/vendor_data.json",
                contents: try Self.json(["cloud-init": String(decoding: vendorData, as: UTF8.self)])),
        ]
        if let document = try networkDocument(), case let ethernets = ethernets(of: document), !ethernets.isEmpty {
            files.append(
                .init(name: "openstack/latest/network_data.json", contents: try Self.json(networkData(ethernets))))
        }
        return ISO9660Image(volumeIdentifier: "config-2", timestamp: timestamp, files: files)
    }

    /// network_data.json from version 2 ethernets: a `phy` link per NIC (by MAC, as cloud-init matches
    /// them), an `ipv4_dhcp` network for `dhcp4`, an `ipv4` one per address with the gateway and
    /// nameservers passed through, and the other routes.
    func networkData(_ ethernets: [(id: String, settings: Node.Mapping)]) throws(SeedError) -> [String: Any] {
        var links: [[String: Any]] = []
        var networks: [[String: Any]] = []
        for (id, settings) in ethernets {
            guard case .mapping(let match)? = settings[YAML.string("match")],
                let mac = match[YAML.string("macaddress")]?.string
            else {
                throw .invalidValue(
                    "network-config's ethernet \(id) has no match.macaddress: a config drive names NICs by MAC address")
            }
            var link: [String: Any] = ["id": id, "type": "phy", "ethernet_mac_address": mac.lowercased()]
            if let name = settings[YAML.string("set-name")]?.string { link["name"] = name }
            if let mtu = settings[YAML.string("mtu")]?.int { link["mtu"] = mtu }
            links.append(link)
            if settings[YAML.string("dhcp4")]?.bool == true {
                networks.append(["id": "\(id)-dhcp4", "link": id, "type": "ipv4_dhcp"])
            }
            var nameservers: [String] = []
            if case .mapping(let dns)? = settings[YAML.string("nameservers")],
                case .sequence(let addresses)? = dns[YAML.string("addresses")]
            {
                nameservers = addresses.compactMap(\.string)
            }
            var gateway = settings[YAML.string("gateway4")]?.string
            var routes: [[String: String]] = []
            if case .sequence(let list)? = settings[YAML.string("routes")] {
                for case .mapping(let route) in list {
                    guard let to = route[YAML.string("to")]?.string, let via = route[YAML.string("via")]?.string
                    else { continue }
                    if to == "default" || to == "0.0.0.0/0" {
                        gateway = gateway ?? via
                    } else if let (network, mask) = Self.ipv4Network(to) {
                        routes.append(["network": network, "netmask": mask, "gateway": via])
                    }
                }
            }
            if case .sequence(let addresses)? = settings[YAML.string("addresses")] {
                for (index, address) in addresses.compactMap(\.string).enumerated() {
                    guard let (ip, mask) = Self.ipv4Network(address, keepHost: true) else {
                        throw .invalidValue(
                            "network-config's ethernet \(id) has the address \(address): a config drive made by Nimbus carries IPv4 addresses written address/prefix"
                        )
                    }
                    var network: [String: Any] = [
                        "id": "\(id)-\(index)", "link": id, "type": "ipv4", "ip_address": ip, "netmask": mask,
                    ]
                    if index == 0, let gateway { network["gateway"] = gateway }
                    if index == 0, !routes.isEmpty { network["routes"] = routes }
                    if !nameservers.isEmpty { network["dns_nameservers"] = nameservers }
                    networks.append(network)
                }
            }
        }
        return ["links": links, "networks": networks, "services": [] as [Any]]
    }

    /// `a.b.c.d/len` as the address (or its network) and a dotted netmask.
    static func ipv4Network(_ text: String, keepHost: Bool = false) -> (String, String)? {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let length = Int(parts[1]), (0...32).contains(length) else { return nil }
        let octets = parts[0].split(separator: ".").compactMap { UInt32($0) }
        guard octets.count == 4, octets.allSatisfy({ $0 < 256 }) else { return nil }
        let address = octets.reduce(0) { $0 << 8 | $1 }
        let mask: UInt32 = length == 0 ? 0 : ~0 << (32 - UInt32(length))
        func dotted(_ value: UInt32) -> String {
            (0..<4).map { String(value >> (24 - 8 * $0) & 0xFF) }.joined(separator: ".")
        }
        return (dotted(keepHost ? address : address & mask), dotted(mask))
    }

    static func json(_ object: Any) throws(SeedError) -> [UInt8] {
        do {
            let data = try JSONSerialization.data(
                withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            return Array(data) + [0x0A]
        } catch {
            throw .invalidValue("could not render JSON: \(error)")
        }
    }

    // MARK: OVF environment

    /// The OVF environment volume (`OVF-TRANSPORT`, one file `ovf-env.xml`).
    public func ovfEnvironment(timestamp: Date) throws(SeedError) -> ISO9660Image {
        ISO9660Image(
            volumeIdentifier: "OVF-TRANSPORT", timestamp: timestamp,
            files: [.init(name: "ovf-env.xml", contents: Array(try ovfEnvironmentXML().utf8))])
    }

    /// `ovf-env.xml`: each value on one line (XML would turn a newline in an attribute into a space), the
    /// multi-line ones base64, as cloud-init's OVF datasource decodes them.
    func ovfEnvironmentXML() throws(SeedError) -> String {
        let meta = try parsedMetaData()
        var properties: [(String, String)] = [("instance-id", meta.instanceID)]
        if let hostname = meta.hostname { properties.append(("hostname", hostname)) }
        // The datasource takes one key.
        guard meta.publicKeys.count <= 1 else {
            throw .invalidValue(
                "meta-data has \(meta.publicKeys.count) public-keys, and the OVF environment carries one: give the others in user-data's ssh_authorized_keys"
            )
        }
        if let key = meta.publicKeys.first { properties.append(("public-keys", key)) }
        properties.append(
            ("user-data", Data(Self.multipart(vendorData: vendorData, userData: userData)).base64EncodedString()))
        if let document = try networkDocument() {
            let wrapped = try YAML.emit(YAML.mapping([("network", Node.mapping(document))]))
            properties.append(("network-config", Data(wrapped.utf8).base64EncodedString()))
        }
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" oe:id="">
              <PropertySection>

            """
                + properties.map { "    <Property oe:key=\"\($0.0)\" oe:value=\"\(XMLText.escape($0.1))\"/>\n" }
                .joined()
                    + """
                      </PropertySection>
                    </Environment>

                    """
    }

    /// vendor-data and user-data as one MIME multipart document, in that order: cloud-init merges the
    /// parts, a later one winning, as user-data wins over vendor-data. Without vendor-data, user-data as it
    /// is. A gzip part is typed so that cloud-init decompresses it (`DECOMP_TYPES`); a MIME multipart
    /// user-data goes in whole, as a nested multipart cloud-init walks into; any other part is `text/plain`,
    /// which cloud-init types by its first line as it types user-data.
    static func multipart(vendorData: [UInt8], userData: [UInt8]) -> [UInt8] {
        guard !vendorData.isEmpty else { return userData }
        var digest: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in vendorData + userData { digest = (digest ^ UInt64(byte)) &* 0x0100_0000_01b3 }
        let boundary = "===============nimbus\(String(digest, radix: 16))=="
        var text = "Content-Type: multipart/mixed; boundary=\"\(boundary)\"\nMIME-Version: 1.0\n\n"
        for (part, name) in [(vendorData, "vendor-data"), (userData, "user-data")] where !part.isEmpty {
            text += "--\(boundary)\n"
            if UserData.classify(part) == .mimeMultipart {
                text += String(decoding: part, as: UTF8.self) + "\n"
                continue
            }
            let type = UserData.classify(part) == .gzip ? "application/x-gzip" : "text/plain; charset=\"utf-8\""
            text += "Content-Type: \(type)\nMIME-Version: 1.0\n"
            text += "Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"\(name)\"\n\n"
            text += Data(part).base64EncodedString(options: .lineLength76Characters) + "\n"
        }
        text += "--\(boundary)--\n"
        return Array(text.utf8)
    }
}
