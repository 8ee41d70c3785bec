import Foundation
import NimbusCore
import NimbusDisks
import NimbusImages

extension InstanceManager {
    // MARK: Capture

    /// Vagrant's insecure public key (`keys/vagrant.pub` of Vagrant's source, as Debian's `vagrant` 2.3.4
    /// installs it): a box's `vagrant` user authorises it, and `vagrant up` logs in with it once to put a key
    /// of its own in its place.
    public static let vagrantInsecureKeys = [
        "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"
    ]

    /// What the guest runs, as root, to become an image, the way image builders generalise one: `cloud-init
    /// clean` (its state, logs and seed), an empty machine-id for systemd to make anew, the SSH host keys, the
    /// sudo rules cloud-init wrote, the volume mounts it added to fstab, the journal and logs emptied, the
    /// installation's user and key gone (`$1`), and the free blocks trimmed so the image stays small. With
    /// `$2` = yes, first the `vagrant` user with Vagrant's insecure key (`$3`) and passwordless sudo, and
    /// cloud-init set to run without a seed (as under vagrant-libvirt), on the local datasources or None. It
    /// prints whether the QEMU guest agent is installed.
    static let generalizeScript = """
        set -eu
        user=$1 vagrant=$2 keys=$3
        agent=no
        if command -v qemu-ga >/dev/null 2>&1; then agent=yes; fi
        if [ "$vagrant" = yes ]; then
            id vagrant >/dev/null 2>&1 || useradd --create-home --shell /bin/bash vagrant
            install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
            printf '%s\\n' "$keys" >/home/vagrant/.ssh/authorized_keys
            chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys
            chmod 0600 /home/vagrant/.ssh/authorized_keys
            printf 'vagrant ALL=(ALL) NOPASSWD:ALL\\n' >/etc/sudoers.d/vagrant
            chmod 0440 /etc/sudoers.d/vagrant
            # vagrant-libvirt gives no seed: cloud-init still runs then (ds-identify's notfound=enabled),
            # looking at the local datasources only and falling back to None, which brings up DHCP on the
            # first NIC and makes the host keys.
            mkdir -p /etc/cloud/cloud.cfg.d
            printf 'datasource_list: [NoCloud, ConfigDrive, OVF, None]\\n' >/etc/cloud/cloud.cfg.d/90-nimbus-vagrant.cfg
            printf 'policy: search,found=all,maybe=all,notfound=enabled\\n' >/etc/cloud/ds-identify.cfg
        fi
        cloud-init clean --logs --seed
        # An empty machine-id, as virt-sysprep leaves it: systemd makes a new one at the next boot. cloud-init
        # 22.4's `clean --machine-id` deletes the file instead, and a Debian root mounted read-only at first
        # then does not boot ("Missing /etc/machine-id and /etc is mounted read-only").
        : >/etc/machine-id
        [ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id
        rm -f /etc/ssh/ssh_host_* /etc/sudoers.d/90-cloud-init-users
        sed -i '/comment=cloudconfig/d' /etc/fstab
        # The journal is rotated and dropped by journald itself (its files are in use); the rest emptied.
        journalctl --rotate >/dev/null 2>&1 || true
        journalctl --vacuum-time=1s >/dev/null 2>&1 || true
        find /var/log -path /var/log/journal -prune -o -type f \\( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \\) -exec rm -f {} +
        find /var/log -path /var/log/journal -prune -o -type f -exec truncate -s 0 {} +
        userdel --force --remove "$user" >/dev/null 2>&1 || true
        sync
        fstrim --all >/dev/null 2>&1 || true
        echo "guest-agent: $agent"
        """

    /// `nimbus image capture NAME IMAGE`: the running instance `name` generalised in the guest
    /// (`generalizeScript`), stopped, and its root disk (its image merged in) written as a standalone
    /// compressed qcow2 into the image cache as the local image `imageName`, recorded with where it came from.
    /// `nimbus launch IMAGE` then boots it as a new machine: cloud-init runs as on a first boot, with a new
    /// machine-id, new host keys and the new instance's personality.
    ///
    /// The instance is of no more use as it was (no host keys, no user): it is deleted with its folder,
    /// volumes kept, unless `keepInstance`, which gives it a new seed with its own personality and host key
    /// (`reseed`) and starts it again. The name is checked before anything changes; a failure before the
    /// guest is touched leaves the instance as it was.
    public func capture(
        _ name: InstanceName, as imageName: String, vagrant: Bool, keepInstance: Bool, timeout: Duration
    ) async throws -> CachedImage {
        let clock = ContinuousClock.now
        let dir = try store.requireExisting(name)
        let spec = try store.loadSpec(name)
        let state = try store.loadState(name)
        try requireUsable(name, state)
        guard !FileManager.default.fileExists(atPath: dir.ignition.path) else {
            throw NimbusError(
                .unsupported,
                "\(name) is configured by Ignition, which runs on a machine's first boot only and leaves no state to clean: capture a cloud-init instance, or build the CoreOS image with its own tools"
            )
        }
        guard spec.driver == .qemu else {
            throw NimbusError(
                .unsupported,
                "\(name) runs through libvirt, whose pool holds its root disk: capture reads the disk from the instance's folder, so it captures QEMU instances (launch one with --driver qemu)"
            )
        }
        if keepInstance, Self.storedHostKey(dir) == nil {
            throw NimbusError(
                .invalidState,
                "\(name) was launched before Nimbus kept host keys in the instance's folder, so it could not be given its key back after the capture: capture it without --keep-instance"
            )
        }
        let images = try imageStore(offline: true)
        try await images.requireNewName(imageName)
        var source: CachedImage?
        if let digest = state.imageDigest { source = await images.entry(digest) }
        let ssh = try await sshAccess(name)

        progress("\(name): generalising the guest (cloud-init clean, host keys, user, logs, fstrim)")
        let keys = Self.vagrantInsecureKeys.joined(separator: "\n")
        let generalized = try await ssh.run([
            "sudo", "sh", "-c", Self.generalizeScript, "nimbus-capture", state.sshUser, vagrant ? "yes" : "no", keys,
        ])
        await ssh.closeSharedConnection()
        guard generalized.status == 0, let agentLine = generalized.standardOutput.split(separator: "\n").last,
            agentLine.hasPrefix("guest-agent: ")
        else {
            throw NimbusError(
                .guestSetup,
                "generalising \(name) failed (exit \(generalized.status)): \(generalized.standardError.trimmingCharacters(in: .whitespacesAndNewlines)); the instance may be half generalised: `nimbus recover --reseed \(name)` gives it its personality again"
            )
        }

        // From here the guest has no user and no host keys: a failure says how to get it back.
        let staged = try await images.stagingFolder().appending(
            path: "capture-\(getpid())-\(UUID().uuidString.prefix(8)).qcow2")
        let image: CachedImage
        do {
            progress("\(name): stopping")
            try await store.withLock(name) { _ in
                try await stopIfRunning(name, dir.machine, driver: hypervisor.driver(for: spec))
            }
            progress("\(name): writing \(imageName), a compressed qcow2 of its disk")
            try await DiskImage.write(dir.disk, as: .qcow2, compressed: true, to: staged)
            image = try await images.adopt(
                staged, name: imageName, source: source,
                capture: CaptureRecord(
                    instance: name.rawValue, sourceImage: spec.image, sourceVersion: source?.version,
                    capturedAt: Date(), vagrantUser: vagrant, guestAgent: agentLine.hasSuffix("yes")))
        } catch {
            try? FileManager.default.removeItem(at: staged)
            throw NimbusError(
                .guestSetup,
                "capturing \(name) failed after its guest was generalised (no user, no host keys): \(error); `nimbus recover --reseed \(name)` gives it its personality back, or delete it",
                cause: error)
        }
        progress(
            "\(name): captured as \(imageName) (\(ByteSize(bytes: image.size).humanReadable)) in \(elapsed(since: clock))"
        )
        if keepInstance {
            try await reseed(name, timeout: timeout)
        } else {
            try await delete(name, purge: true)
        }
        return image
    }
}
