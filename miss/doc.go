// Package miss is where vtepd hears the kernel ask about an address it cannot
// reach, and answers.
//
// The kernel asks over rtnetlink multicast (RTNLGRP_NEIGH) with RTM_GETNEIGH
// messages. Three kinds matter (shared/design/kernel-notes.md):
//
//	the host routes to an address with no entry    L3, INCOMPLETE, NDA_DST
//	an answered entry aged and is used again       L3, PROBE, NDA_DST + NDA_LLADDR
//	no FDB entry for a destination MAC             L2, STALE, NDA_LLADDR only
//
// They are told apart by their attributes, never by ndm_family: an FDB miss
// arrives as AF_INET. A PROBE request carries the cached MAC and is a miss
// all the same; ignoring it (as early flannel did, flannel#283) lets aged
// entries fail.
//
// A miss goes through two files: listener.go reads it off the socket and
// decodes it (miss.go), answer.go turns it into the fewest kernel writes:
// for an L3 miss the FDB entry VTEP MAC -> public IP first (a packet
// released towards a MAC without an FDB entry is dropped, not queued), then
// the neighbour entry, which releases the packets the kernel queued. The
// writes themselves are package fabric's.
//
// Beside the answer path: invalidate.go follows the lease table (entries of
// a lease that goes or changes go or are re-pointed), and reconcile.go
// brings the device's entries in line with the table as a whole, at start
// and after a socket overflow.
//
// miss imports store (leases) and fabric (the kernel's entry types); it must
// never import the agent.
package miss
