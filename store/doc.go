// Package store is vtepd's view of etcd: the overlay network's configuration,
// this host's own subnet lease, and an in-memory table of every lease in the
// overlay.
//
// The etcd schema is flannel's (etcd v3 mode), so vtepd hosts and flanneld
// hosts can share one overlay:
//
//	<prefix>/config               {"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}
//	<prefix>/subnets/10.5.48.0-24 {"PublicIP":"203.0.113.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"}}
//
// A dual-stack overlay (EnableIPv6 and IPv6Network in the config) keys a
// host's lease by both subnets, and its value has both parts:
//
//	<prefix>/subnets/10.5.48.0-24&fd00:10:0:30::-64
//	    {"PublicIP":"203.0.113.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan",
//	     "BackendData":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:54"},"BackendV6Data":{"VNI":1,"VtepMAC":"e2:5a:5b:43:22:55"}}
//
// An IPv6-only one (EnableIPv4 false) writes flannel's zero IPv4 part,
// 0.0.0.0-0&fd00:10:0:30::-64, with PublicIP 0.0.0.0 unless the IPv6 part
// rides an IPv4 underlay (vtepd's extension: PublicIPv6 null, PublicIP its
// address).
//
// The Table is the miss path's only source of truth. It is loaded by one list
// (read in pages, all at one revision) and kept current by a watch from the
// list's revision; lookups by address of either family and by VTEP MAC take
// a read lock for an index probe and the read of a lease's records (one
// 64-byte record, and a 40-byte one for its IPv6 part), never across I/O,
// and allocate nothing.
//
// Everything read from etcd is untrusted: a value anyone could have written is
// validated, and a bad one is skipped with an error that names its key.
package store
