// Package fabric is vtepd's one door to the kernel's link, route, neighbour
// and FDB tables: it writes them (the VXLAN devices and their sysctls, their
// addresses and the one route for the overlay, the neighbour and FDB
// entries that answer misses, the routes of host answers and of
// DirectRouting), reads them, and watches the devices. Outside fabric,
// nothing in vtepd writes or dumps those tables; the one other socket is the
// miss subscription, package miss's.
//
// Writers and readers are apart. Entries owns the sockets the miss path
// writes through; Reader (a socket of its own, never written through) is for
// whoever only looks: health checks, metrics, `vtepd monitor`, the lab's
// assertions. Each can be opened in another network namespace, so that tests
// aim them at a lab host. Nothing here decides what should be installed;
// that is the miss package's job.
//
// There is one device per family the overlay carries, named as flannel
// names them: flannel.<VNI> for IPv4, flannel-v6.<VNI> for IPv6. The IPv6
// device runs over the host's IPv6 underlay address or, in an IPv6-only
// overlay on a host without one, over its IPv4 one (the caller's choice,
// DeviceSpec.Local). Encapsulation costs 50 bytes over IPv4 and 70 over
// IPv6, and the device's MTU is the underlay's (or Backend.MTU) less that.
//
// A device is set up the way the kernel's miss path needs it (see
// shared/design/kernel-notes.md):
//
//   - nolearning proxy l2miss l3miss (learning only if Backend.Learning
//     asks for it): the kernel never learns or floods, it asks user space
//     instead;
//   - application probes on (app_solicit) and unicast and multicast probes
//     off, under net/ipv4/neigh/<device> or net/ipv6/neigh/<device>: with
//     proxy the device answers or eats the kernel's own ARP and NDP
//     probes, so every second spent on them is a second before user space
//     is asked to re-confirm an aged entry. The IPv6 device also has no
//     DAD, takes no router advertisements and sends no solicitations. The
//     sysctls are written as files: the dot in a device's name breaks
//     sysctl(8)'s dotted names;
//   - the device carries the lease's first address of its family as a /32
//     or a /128, and one on-link route covers the whole overlay. Nothing is
//     programmed per peer up front.
//
// An answer writes the peer's FDB entry before the address's neighbour
// entry: the neighbour write releases the packets the kernel queued, which
// need the FDB entry in place. Entries.SetFDBAndNeigh sends both in one
// datagram, in that order.
package fabric
