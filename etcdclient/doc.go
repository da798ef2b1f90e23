// Package etcdclient makes vtepd's etcd client from flannel's flags: the
// endpoints, TLS (a CA, a client certificate read again at every handshake)
// and a username with a password. It checks the settings before any
// connection, so that a wrong file or a mismatched pair stops vtepd at once
// with an error that names the flag, the path and why; it reports refused
// TLS handshakes with a hint at the cause; and Dial waits out an etcd that
// does not answer yet, where a rejected password (ErrAuth) ends at once.
//
// It knows nothing of leases or of the overlay: that is package store's.
// It must never import the agent, store or the kernel packages.
package etcdclient
