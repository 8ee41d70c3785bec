#ifndef NIMBUS_CLIBVIRT_H
#define NIMBUS_CLIBVIRT_H

// libvirt's C API (Debian: libvirt-dev for the headers, libvirt0 at run time), loaded on first use.
//
// Nimbus does not link libvirt: loading libvirt.so.0 and the ~55 libraries it pulls in (glib, gnutls,
// libxml2, ...) costs 15-25 ms at every process start, paid by `nimbus list` and `nimbus seed` as much as
// by a libvirt launch. Instead the functions Nimbus calls are listed once below, and nimbus_libvirt_load()
// dlopens libvirt.so.0 and resolves them into a table when a libvirt connection is first opened. A host
// without libvirt runs every other command, and a libvirt command says what to install.
//
// To call another libvirt function: add it to NIMBUS_LIBVIRT_FUNCTIONS and call `libvirt.<name>(...)`.

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#define NIMBUS_LIBVIRT_FUNCTIONS(X) \
    X(virInitialize) \
    X(virGetLastError) \
    X(virResetLastError) \
    X(virSetErrorFunc) \
    X(virConnectOpen) \
    X(virConnectOpenAuth) \
    X(virConnectClose) \
    X(virConnectGetURI) \
    X(virConnectGetHostname) \
    X(virConnectIsAlive) \
    X(virConnectListAllDomains) \
    X(virConnectDomainEventRegisterAny) \
    X(virConnectDomainEventDeregisterAny) \
    X(virEventRegisterDefaultImpl) \
    X(virEventRunDefaultImpl) \
    X(virDomainLookupByName) \
    X(virDomainCreateXML) \
    X(virDomainDefineXML) \
    X(virDomainCreate) \
    X(virDomainCreateWithFlags) \
    X(virDomainUndefine) \
    X(virDomainUndefineFlags) \
    X(virDomainFree) \
    X(virDomainGetName) \
    X(virDomainGetXMLDesc) \
    X(virDomainGetMetadata) \
    X(virDomainSetMetadata) \
    X(virDomainGetState) \
    X(virDomainIsActive) \
    X(virDomainIsPersistent) \
    X(virDomainShutdownFlags) \
    X(virDomainDestroy) \
    X(virDomainDestroyFlags) \
    X(virDomainSuspend) \
    X(virDomainResume) \
    X(virDomainReset) \
    X(virDomainOpenConsole) \
    X(virDomainInterfaceAddresses) \
    X(virDomainInterfaceFree) \
    X(virDomainSnapshotCreateXML) \
    X(virDomainSnapshotLookupByName) \
    X(virDomainSnapshotDelete) \
    X(virDomainSnapshotFree) \
    X(virDomainRevertToSnapshot) \
    X(virDomainListAllSnapshots) \
    X(virDomainSnapshotGetName) \
    X(virStoragePoolLookupByName) \
    X(virStoragePoolDefineXML) \
    X(virStoragePoolCreateXML) \
    X(virStoragePoolBuild) \
    X(virStoragePoolCreate) \
    X(virStoragePoolSetAutostart) \
    X(virStoragePoolRefresh) \
    X(virStoragePoolGetInfo) \
    X(virStoragePoolIsActive) \
    X(virStoragePoolListAllVolumes) \
    X(virStoragePoolFree) \
    X(virStorageVolLookupByName) \
    X(virStorageVolCreateXML) \
    X(virStorageVolGetPath) \
    X(virStorageVolGetName) \
    X(virStorageVolGetInfo) \
    X(virStorageVolDelete) \
    X(virStorageVolResize) \
    X(virStorageVolUpload) \
    X(virStorageVolDownload) \
    X(virStorageVolFree) \
    X(virStreamNew) \
    X(virStreamSend) \
    X(virStreamRecv) \
    X(virStreamFinish) \
    X(virStreamAbort) \
    X(virStreamFree) \
    X(virDomainDefineXMLFlags) \
    X(virDomainGetUUIDString) \
    X(virConnectGetCapabilities) \
    X(virNodeGetInfo) \
    X(virStoragePoolGetXMLDesc) \
    X(virStorageVolCreateXMLFrom) \
    X(virStorageVolGetXMLDesc) \
    X(virStreamSendHole) \
    X(virConnectListAllNetworks) \
    X(virNetworkLookupByName) \
    X(virNetworkDefineXML) \
    X(virNetworkCreate) \
    X(virNetworkDestroy) \
    X(virNetworkUndefine) \
    X(virNetworkIsActive) \
    X(virNetworkSetAutostart) \
    X(virNetworkUpdate) \
    X(virNetworkGetXMLDesc) \
    X(virNetworkGetName) \
    X(virNetworkFree)

/// The libvirt functions Nimbus calls, resolved from libvirt.so.0.
typedef struct NimbusLibvirt {
#define NIMBUS_LIBVIRT_FIELD(name) __typeof__(name) *_Nonnull name;
    NIMBUS_LIBVIRT_FUNCTIONS(NIMBUS_LIBVIRT_FIELD)
#undef NIMBUS_LIBVIRT_FIELD
} NimbusLibvirt;

/// Loads libvirt.so.0 and resolves every function, once per process (thread-safe). Returns the table, or
/// NULL with the reason (dlerror's text, naming the library or the missing symbol) in *error.
const NimbusLibvirt *_Nullable nimbus_libvirt_load(const char *_Nullable *_Nonnull error);

#endif
