// Package fabric is vtepd's one door to the kernel's link, route, neighbour
// and FDB tables: it writes them (the VXLAN device and its sysctls, its
// address and the one route for the overlay, the neighbour and FDB entries
// that answer misses), reads them, and watches the device. Outside fabric,
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
// The device is set up the way the kernel's miss path needs it (see
// shared/design/kernel-notes.md):
//
//   - nolearning proxy l2miss l3miss: the kernel never learns or floods, it
//     asks user space instead;
//   - application probes on (app_solicit) and unicast probes off
//     (ucast_solicit=0): with proxy the unicast ARP probes are eaten by the
//     device itself, so every second spent on them is a second before user
//     space is asked to re-confirm an aged entry;
//   - the device carries the lease's first address as a /32 and one on-link
//     route covers the whole overlay. Nothing is programmed per peer up front.
package fabric
