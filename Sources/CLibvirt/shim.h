#ifndef NIMBUS_CLIBVIRT_SHIM_H
#define NIMBUS_CLIBVIRT_SHIM_H

// libvirt's C API (Debian: libvirt-dev). Only NimbusMachines' LibvirtDriver imports this module.
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#endif
