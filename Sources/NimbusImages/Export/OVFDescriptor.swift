import Foundation
import NimbusCore

/// The OVF 1.0 descriptor of a one-disk virtual machine, as an OVA carries it to VMware (vSphere, Workstation,
/// Fusion) and to VirtualBox, with the properties cloud-init's OVF datasource reads.
///
/// The hardware is a template's: 2 vCPUs, 2 GiB, the disk on a paravirtual SCSI controller, a VMXNET3 NIC on
/// "VM Network", and a CD-ROM on IDE, which is where vSphere puts the OVF environment (`ovf-env.xml`) when
/// the `iso` transport is chosen. The `ProductSection` declares cloud-init's keys (`instance-id`,
/// `hostname`, `seedfrom`, `public-keys`, `user-data` as base64, `password`), so the import wizard asks for
/// them and the environment carries them to the guest; `user-data` may be filled in at export.
///
/// Written by hand as text: it is one fixed shape with a few values, every one escaped.
struct OVFDescriptor {
    /// The virtual machine's name.
    var name: String
    /// The disk file's name inside the package, its size, and the size the guest sees.
    var diskFile: String
    var diskFileSize: UInt64
    var capacity: UInt64
    /// The guest operating system, for VMware's guest type.
    var distribution: Distribution?
    /// Boot by UEFI (`efi`) rather than BIOS.
    var uefi: Bool
    /// The `user-data` property's default, already base64.
    var userData: String

    /// CIM's operating system id and VMware's guest type.
    var operatingSystem: (id: Int, vmware: String) {
        switch distribution {
        case .ubuntu: (94, "ubuntu64Guest")
        case .debian: (96, "debian11_64Guest")
        case .fedoraCoreOS: (101, "coreos64Guest")
        case nil: (101, "otherLinux64Guest")
        }
    }

    func render() -> String {
        let os = operatingSystem
        let name = XMLText.escape(name)
        func property(_ key: String, _ value: String, _ label: String, _ description: String) -> String {
            """
                  <Property ovf:key="\(key)" ovf:type="string" ovf:userConfigurable="true" ovf:value="\(XMLText.escape(value))">
                    <Label>\(label)</Label>
                    <Description>\(description)</Description>
                  </Property>

            """
        }
        func item(_ body: String) -> String { "      <Item>\n\(body)      </Item>\n" }
        func field(_ key: String, _ value: String) -> String { "        <rasd:\(key)>\(value)</rasd:\(key)>\n" }
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
              <References>
                <File ovf:href="\(XMLText.escape(diskFile))" ovf:id="file1" ovf:size="\(diskFileSize)"/>
              </References>
              <DiskSection>
                <Info>Virtual disk information</Info>
                <Disk ovf:capacity="\(capacity)" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
              </DiskSection>
              <NetworkSection>
                <Info>The list of logical networks</Info>
                <Network ovf:name="VM Network">
                  <Description>The VM Network network</Description>
                </Network>
              </NetworkSection>
              <VirtualSystem ovf:id="\(name)">
                <Info>A virtual machine</Info>
                <Name>\(name)</Name>
                <OperatingSystemSection ovf:id="\(os.id)" vmw:osType="\(os.vmware)">
                  <Info>The kind of installed guest operating system</Info>
                </OperatingSystemSection>
                <ProductSection ovf:required="false">
                  <Info>Cloud-Init customization</Info>
                  <Product>\(name)</Product>

            """
                + property(
                    "instance-id", "id-ovf", "A unique instance ID for this instance",
                    "cloud-init takes first-boot actions when it changes")
                + property("hostname", Self.hostname(self.name), "Hostname", "The guest's hostname")
                + property(
                    "seedfrom", "", "URL to seed the instance data from",
                    "A file:// or / path in the guest holding meta-data and user-data; empty for none")
                + property(
                    "public-keys", "", "SSH public key", "One SSH public key for the default user's authorized_keys")
                + property(
                    "user-data", userData, "Encoded user-data",
                    "Base64 of a cloud-init user-data file (#cloud-config, a script, or MIME multipart)")
                + property(
                    "password", "", "Default user's password",
                    "Sets the default user's password, which must be changed at first login; empty for none")
                    + """
                        </ProductSection>
                        <VirtualHardwareSection ovf:transport="iso com.vmware.guestInfo">
                          <Info>Virtual hardware requirements</Info>
                          <System>
                            <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
                            <vssd:InstanceID>0</vssd:InstanceID>
                            <vssd:VirtualSystemIdentifier>\(name)</vssd:VirtualSystemIdentifier>
                            <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
                          </System>

                    """
                + item(
                    field("AllocationUnits", "hertz * 10^6") + field("Description", "Number of Virtual CPUs")
                        + field("ElementName", "2 virtual CPU(s)") + field("InstanceID", "1")
                        + field("ResourceType", "3") + field("VirtualQuantity", "2"))
                + item(
                    field("AllocationUnits", "byte * 2^20") + field("Description", "Memory Size")
                        + field("ElementName", "2048MB of memory") + field("InstanceID", "2")
                        + field("ResourceType", "4") + field("VirtualQuantity", "2048"))
                + item(
                    field("Address", "0") + field("Description", "SCSI Controller")
                        + field("ElementName", "SCSI Controller 0") + field("InstanceID", "3")
                        + field("ResourceSubType", "VirtualSCSI") + field("ResourceType", "6"))
                + item(
                    field("Address", "0") + field("Description", "IDE Controller")
                        + field("ElementName", "IDE Controller 0") + field("InstanceID", "4")
                        + field("ResourceType", "5"))
                + item(
                    field("AddressOnParent", "0") + field("ElementName", "Hard disk 1")
                        + field("HostResource", "ovf:/disk/vmdisk1") + field("InstanceID", "5")
                        + field("Parent", "3") + field("ResourceType", "17"))
                + item(
                    field("AddressOnParent", "0") + field("AutomaticAllocation", "false")
                        + field("ElementName", "CD-ROM 1") + field("InstanceID", "6") + field("Parent", "4")
                        + field("ResourceType", "15"))
                + item(
                    field("AddressOnParent", "7") + field("AutomaticAllocation", "true")
                        + field("Connection", "VM Network") + field("Description", "VmxNet3 ethernet adapter")
                        + field("ElementName", "Network adapter 1") + field("InstanceID", "7")
                        + field("ResourceSubType", "VmxNet3") + field("ResourceType", "10"))
                    + """
                          <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="\(uefi ? "efi" : "bios")"/>
                        </VirtualHardwareSection>
                      </VirtualSystem>
                    </Envelope>

                    """
    }

    /// A hostname from a machine name: letters, digits and hyphens, at most 63.
    static func hostname(_ name: String) -> String {
        let mapped = String(name.lowercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "-" })
        let trimmed = mapped.trimmingCharacters(in: CharacterSet(charactersIn: "-")).prefix(63)
        return trimmed.isEmpty ? "localhost" : String(trimmed)
    }
}
