package xds

import (
	"testing"
	"time"
)

// Reconnect delays are drawn below a cap that doubles per failure up to
// BackoffMax, and spread (jitter) rather than fixed.
func TestBackoffIsCappedExponentialWithJitter(t *testing.T) {
	c := &Client{opts: Options{BackoffInitial: 100 * time.Millisecond, BackoffMax: 2 * time.Second}}
	for failures, limit := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
		limit *= time.Millisecond
		seen := map[time.Duration]bool{}
		for range 200 {
			d := c.backoff(failures)
			if d <= 0 || d > limit {
				t.Fatalf("after %d failures: delay %v outside (0, %v]", failures, d, limit)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("after %d failures: only %d distinct delays in 200 draws; no jitter", failures, len(seen))
		}
	}
	if d := c.backoff(1000); d <= 0 || d > 2*time.Second {
		t.Errorf("after many failures: %v", d)
	}
}
