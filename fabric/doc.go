// Package fabric writes vtepd's kernel state through rtnetlink: the VXLAN
// device and its sysctls, its address and the one route for the overlay, and
// the neighbour and FDB entries that answer misses.
//
// Everything here works on a vishvananda/netlink Handle, so that tests can aim
// it at a network namespace. Nothing here decides what should be installed;
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
