package netns_test

import (
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// TestLiveConfigChange: a change of the network config while vtepd runs is
// logged with the fields that differ and what vtepd does about it (runs on
// with the config it started with, and says a restart is needed); an
// invalid one is an error that names the key; traffic goes on throughout.
func TestLiveConfigChange(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtlivecfg", 2, 4)
	h1, h2 := o.hosts[0], o.hosts[1]
	c := etcdClient(t, o.lab)
	key := prefix + "/config"
	waitLog := func(msg string, check func(netns.LogEntry) bool) netns.LogEntry {
		t.Helper()
		var found netns.LogEntry
		err := netns.Poll(10*time.Second, func() error {
			for _, e := range h1.Vtepd.Entries(msg) {
				if check(e) {
					found = e
					return nil
				}
			}
			return errString("not logged yet: " + msg)
		})
		if err != nil {
			t.Fatal(err)
		}
		return found
	}
	differences := func(e netns.LogEntry) string {
		var s []string
		for _, d := range e["differences"].([]any) {
			s = append(s, d.(string))
		}
		return strings.Join(s, "; ")
	}

	put(t, c, key, `{"Network":"10.6.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":2}}`)
	e := waitLog("network config in etcd changed; running on with the config in use: restart vtepd to apply it", func(e netns.LogEntry) bool { return e["differences"] != nil })
	if d := differences(e); !strings.Contains(d, "Network 10.5.0.0/16 → 10.6.0.0/16") || !strings.Contains(d, "Backend.VNI 1 → 2") {
		t.Errorf("differences %q, want the Network and the VNI", d)
	}
	if _, body, err := h1.HTTPGet("/readyz"); err != nil || !strings.Contains(body, "restart vtepd to apply it") {
		t.Errorf("health notes during the difference: %q %v", body, err)
	}
	firstPing(t, h1, h2.Container.Extra[0])

	put(t, c, key, `{"Network":`)
	e = waitLog("network config in etcd is no longer valid; running on with the config in use", func(netns.LogEntry) bool { return true })
	if !strings.Contains(e.Str("error"), key) {
		t.Errorf("the error %q does not name %s", e.Str("error"), key)
	}
	firstPing(t, h1, h2.Container.Extra[1])

	put(t, c, key, overlayConfig)
	waitLog("network config in etcd is the running one again", func(netns.LogEntry) bool { return true })
	if _, body, err := h1.HTTPGet("/readyz"); err != nil || strings.Contains(body, "differs from the running one") {
		t.Errorf("health notes once the config is back: %q %v", body, err)
	}
	if done, _ := h1.Vtepd.Exited(); done {
		t.Error("vtepd stopped on a config change")
	}
}
