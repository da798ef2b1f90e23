// Package netns builds a lab of vtepd hosts on one machine out of network
// namespaces, for the integration tests and for `make demo`.
//
//	<lab>-ul   the underlay: a bridge with 198.51.100.1/24, and etcd
//	<lab>-hN   host N: eth0 198.51.100.(10+N) on the bridge, default route
//	           via .1, forwarding on, a real `vtepd run` process, and a
//	           container bridge cbr0 that takes FLANNEL_SUBNET from the
//	           subnet file, as Docker's --bip would
//	<lab>-cN   host N's container: eth0 on cbr0 with the subnet's .2 and
//	           as many more addresses as the test asks for
//
// A host can run a real dockerd instead of cbr0 (Docker, in docker.go):
// Docker's containers are then named <lab>-hN-<container> for the lab's
// tools, and the engines' files live under /run/vtepd-lab/docker.
//
// Everything lives in namespaces the lab creates: no address, route or link
// is added to the root namespace, and no packet is sent from it. The one
// root setting a test may change is the kernel-wide neighbour table limit
// (RaiseNeighbourLimits), restored afterwards, and by the next run after a
// crash. The test process talks to
// etcd through a socket it opens inside the underlay namespace. A lab deletes
// what it made when closed, and deletes what a crashed run of the same lab
// left behind when created.
package netns
