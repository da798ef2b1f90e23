package firewall

import (
	"context"
	"sync"
	"time"

	"go.uber.org/zap"
)

// defaultEvery is Reassert's period when it is given none.
const defaultEvery = 10 * time.Second

// reassert is the loop behind Masquerade.Reassert and Forward.Reassert: every
// period, check (cheap: listings only) and, when something is missing,
// restore. It logs once per restore, with what was missing, and a failure
// once until things work again, so that a firewall that stays broken does
// not fill the log. It runs in the caller's goroutine and returns when ctx
// ends.
func reassert(ctx context.Context, log *zap.Logger, what string, every time.Duration,
	check, restore func() ([]string, error)) {
	if every <= 0 {
		every = defaultEvery
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	failing := false
	fail := func(msg string, err error) {
		if !failing {
			log.Warn(msg, zap.String("rules", what), zap.Error(err))
		}
		failing = true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		missing, err := check()
		if err != nil {
			fail("cannot check firewall rules", err)
			continue
		}
		if len(missing) > 0 {
			// restore checks again under its lock and says what it found,
			// which is what it acted on.
			if missing, err = restore(); err != nil {
				fail("cannot restore firewall rules", err)
				continue
			}
			if len(missing) > 0 {
				log.Info("firewall rules restored", zap.String("rules", what), zap.Strings("missing", missing))
			}
		}
		if failing {
			log.Info("firewall rules in place again", zap.String("rules", what))
		}
		failing = false
	}
}

// guard serialises the operations of a rule owner (Masquerade, Forward) and
// remembers whether its rules are wanted: Ensure arms it, Remove disarms it,
// and Reassert acts only while armed, so that a Reassert still running while vtepd
// shuts down cannot put back rules Remove just took away.
type guard struct {
	mu     sync.Mutex
	armed  bool
	closed bool
}

// run runs fn under the lock, unless closed.
func (g *guard) run(fn func() ([]string, error)) ([]string, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, errClosed
	}
	return fn()
}

// arm runs fn under the lock, after marking the rules wanted or not.
func (g *guard) arm(wanted bool, fn func() ([]string, error)) ([]string, error) {
	return g.run(func() ([]string, error) {
		g.armed = wanted
		return fn()
	})
}

// whileArmed is fn for Reassert: nothing to do while the rules are not wanted.
func (g *guard) whileArmed(fn func() ([]string, error)) func() ([]string, error) {
	return func() ([]string, error) {
		return g.run(func() ([]string, error) {
			if !g.armed {
				return nil, nil
			}
			return fn()
		})
	}
}

// close marks the owner closed and runs release once.
func (g *guard) close(release func() error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	return release()
}
