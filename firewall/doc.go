// Package firewall gives vtepd its two sets of packet-filter rules: the
// ip-masq rules (--ip-masq, Masquerade) and the forward rules
// (--forward-rules, Forward).
//
// Both have the same life: New… checks its arguments and writes nothing;
// Ensure installs what is missing and is a no-op when all is in place, so
// a restarted vtepd finds its rules and leaves them be; Check lists what is
// missing from listings alone; Reassert runs Check every period and restores
// what something else removed, logging once per restore with what was
// missing; Remove deletes vtepd's rules and nothing else, and is no error
// when there are none; Close releases resources and leaves the rules.
// Reassert acts only between Ensure and Remove, so a Reassert still running while
// vtepd shuts down cannot undo a Remove.
//
// Whether a clean shutdown should Remove is the caller's choice, with a
// cost either way: without the rules, a host whose FORWARD policy is DROP
// stops forwarding the overlay, and new connections from its containers to
// the outside are not masqueraded, until vtepd is back; vtepd's devices and
// entries, by contrast, survive a restart on purpose.
//
// # ip-masq
//
// Traffic from this host's subnet to outside the overlay is masqueraded;
// traffic inside the overlay is not. The rules are flannel's MasqRules,
// written with google/nftables into a table of vtepd's own, named after
// the VXLAN device it drives (MasqTable: ip vtepd-nat-flannel.1), chain
// postrouting (type nat, priority srcnat - 10). masqRules says which rules
// and why, including the two flannel rules for traffic from outside the
// overlay, which are kept. With the device flannel.1, the overlay
// 10.5.0.0/16 and the subnet 10.5.48.0/24, `nft list table ip
// vtepd-nat-flannel.1` shows:
//
//	ip saddr 10.5.48.0/24 ip daddr 10.5.0.0/16 counter snat to ip saddr comment "vtepd: subnet to overlay, source kept"
//	ip saddr 10.5.48.0/24 ip daddr != 224.0.0.0/4 counter masquerade fully-random comment "vtepd: subnet to outside, masquerade"
//	ip saddr != 10.5.0.0/16 ip daddr 10.5.48.0/24 counter accept comment "vtepd: outside to subnet, no NAT"
//	ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 counter masquerade fully-random comment "vtepd: outside to overlay, masquerade"
//
// Whenever the rules are not exactly these, the table is replaced whole in
// one transaction, so there is never a moment without rules.
//
// Two vtepds for two overlays on one host (flannel's way: each its own
// etcd prefix, subnet file and VNI, hence its own device) have a table each,
// so neither ever rewrites or removes the other's. Their chains share the
// hook and priority, and neither matches the other's traffic inside its
// overlay: each rule names its own network or subnet on one side at least.
// vtepd before this change had one table, ip vtepd-nat, for whichever
// vtepd wrote it last; the vtepd whose network it holds removes it, in the
// transaction that writes its own table (Masquerade.legacyOwned says why
// that rule).
//
// The first rule is an identity SNAT, not flannel's RETURN: the kernel
// consults every nat chain on the hook until one of them translates, so a
// mere "no NAT here" would leave Docker's own MASQUERADE of its bridge's
// subnet (`! -o docker0`) free to masquerade container traffic into the
// overlay. A translation to the packet's own source is final, and the
// chain runs before iptables' nat table, so container sources survive even
// a dockerd started without --ip-masq=false. Run dockerd with
// --ip-masq=false beside vtepd's --ip-masq all the same (vtepd docker-opts
// says so), as flannel's mk-docker-opts.sh does when the subnet file says
// FLANNEL_IPMASQ=true: otherwise Docker masquerades outside traffic too.
//
// # Forward rules
//
// Traffic to and from the overlay is accepted for forwarding even where the
// forward policy is drop: flannel's ForwardRules, `-s <network> -j ACCEPT`
// and `-d <network> -j ACCEPT`, each marked by a comment naming the network
// ("vtepd: forward from 10.5.0.0/16"). The comment is what makes a rule
// vtepd's: Remove takes only those, and two vtepds for two overlays in one
// namespace leave each other's alone.
//
// Where they go depends on the host (NewForward logs its choice and why):
//
//   - An iptables command installed (the iptables world, where Docker's
//     rules are): through coreos/go-iptables, at the top of DOCKER-USER when
//     Docker made it and FORWARD jumps to it, else at the top of FORWARD;
//     see iptablesForward. Docker usually starts after vtepd, so the rules
//     move into DOCKER-USER on the first restore after it appears, and come
//     back when a restarting dockerd flushes it.
//   - Native nftables forward chains (always checked, beside iptables or
//     without it): through google/nftables, at the top of every filter
//     chain on the forward hook in ip and inet tables, tagged with the
//     comment as nft(8) stores it. An accept in a table of vtepd's own would
//     not do: nftables runs every base chain on a hook, an accept ends only
//     its own chain, and a drop in any chain is final. See nftForward.
//     Beside iptables-nft, the tables iptables-nft manages are left to the
//     iptables side, which writes them its own way.
//   - No iptables command (an nftables-only host): nftables alone.
//
// WithBackend forces one side; WithIPTablesCommand picks iptables-legacy or
// iptables-nft where both are installed (by default, "iptables", the one
// Docker runs).
//
// # Network namespaces
//
// Rules go into the calling process's network namespace: vtepd runs in the
// namespace it serves (the lab starts each one with `ip netns exec`).
// InNetNS aims them at another one, for tests and tools: nftables sockets
// are opened in it (nftables.WithNetNSFd), and iptables commands are run
// from an OS thread moved into it, since a forked command inherits its
// thread's namespace. That needs neither iproute2's `ip netns exec` nor a
// wrapper script, and works the same for every iptables variant.
package firewall
