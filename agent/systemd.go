package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// systemd speaks sd_notify to the service manager that started vtepd, if
// one did (NOTIFY_SOCKET set; otherwise every call does nothing): STATUS=
// with what start-up waits for, so `systemctl status vtepd` says it; READY=1
// once device, lease and table are ready, which is when a Type=notify unit
// counts as started and units ordered after it (dockerd) may start; and,
// under WatchdogSec=, WATCHDOG=1 while the miss path is not stuck.
type systemd struct {
	log    *zap.Logger
	warned atomic.Bool
}

func (s *systemd) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil && !s.warned.Swap(true) {
		// Once: a socket that refuses one message refuses them all.
		s.log.Warn("cannot notify systemd", zap.String("state", state), zap.Error(err))
	}
}

// watchdog pings systemd's watchdog for as long as ctx lasts and turns, the
// count of the miss listener's read loop rounds, grows: the loop comes round
// at least five times a second when idle, so a count that stands still for
// a third of the watchdog's interval means a miss handler or a kernel write
// that does not return. Then the pings stop, and systemd restarts vtepd,
// which leaves device, entries and lease in place for its successor.
// etcd being away is no reason to stop them: a restart would not bring it
// back, and the table answers misses meanwhile.
func (s *systemd) watchdog(ctx context.Context, turns func() uint64) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		s.log.Warn("systemd watchdog settings unreadable; not pinging it", zap.Error(err))
		return nil
	}
	if interval <= 0 {
		return nil
	}
	s.log.Info("pinging systemd's watchdog while the miss path turns", zap.Duration("watchdog", interval))
	tick := time.NewTicker(interval / 3)
	defer tick.Stop()
	last := turns()
	stuck := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := turns()
		switch {
		case now != last:
			s.notify(daemon.SdNotifyWatchdog)
			if stuck {
				s.log.Warn("the miss path turns again; pinging systemd's watchdog again")
			}
			stuck = false
		case !stuck:
			stuck = true
			s.log.Error("the miss path has not come round for a third of the watchdog interval; not pinging systemd's watchdog, which will restart vtepd",
				zap.Duration("watchdog", interval), zap.Uint64("rounds", now))
		}
		last = now
	}
}
