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
// Listener reads the socket; Responder turns one Miss into the fewest kernel
// writes: for an L3 miss the FDB entry VTEP MAC -> public IP first (a packet
// released towards a MAC without an FDB entry is dropped, not queued), then
// the neighbour entry, which releases the packets the kernel queued.
package miss
