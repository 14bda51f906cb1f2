package metrics_test

import (
	"context"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/metrics"
)

func TestReadyzFollowsReady(t *testing.T) {
	var ready atomic.Bool
	base := serve(t, metrics.New("node-a", fixedStatus), func() (bool, string) {
		if ready.Load() {
			return true, "ready: state applied"
		}
		return false, "not ready: waiting for the first xDS state"
	})

	if code, body := get(t, base+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q, want 200 \"ok\\n\"", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || body != "not ready: waiting for the first xDS state\n" {
		t.Errorf("/readyz before ready: %d %q, want 503 with the reason", code, body)
	}
	ready.Store(true)
	if code, body := get(t, base+"/readyz"); code != http.StatusOK || body != "ready: state applied\n" {
		t.Errorf("/readyz once ready: %d %q, want 200 with the reason", code, body)
	}
	ready.Store(false)
	if code, _ := get(t, base+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz after ready turned false: %d, want 503", code)
	}

	resp, err := http.Post(base+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", resp.StatusCode)
	}
}

func TestServeRefusesBadAddress(t *testing.T) {
	m := metrics.New("node-a", nil)
	for _, addr := range []string{"no-port-here", "127.0.0.1:99999"} {
		err := m.Serve(t.Context(), addr, nil)
		if err == nil || !strings.Contains(err.Error(), addr) {
			t.Errorf("Serve(%q) = %v, want an error naming the address", addr, err)
		}
	}
}

func TestServeStopsWithContext(t *testing.T) {
	m := metrics.New("node-a", nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, "127.0.0.1:0", nil) }()
	time.Sleep(50 * time.Millisecond) // let it listen; returning early would pass too
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after its context ended: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
}

// TestMetricsAreDocumented checks /metrics against docs/metrics.md both
// ways: every sluice_ metric served is in the doc, and every one the doc
// names is served, as are the Go and process collectors'.
func TestMetricsAreDocumented(t *testing.T) {
	m := metrics.New("node-a", fixedStatus)
	// Flow counters have no series until a flow of their kind is seen.
	for _, f := range []flow.Flow{
		record(flow.EventOpen, flow.VerdictAllowed),
		closed(1, 1, false),
		record(flow.EventDeny, flow.VerdictDenied),
		record(flow.EventDeny, flow.VerdictAudit),
		request(200, time.Millisecond, false),
	} {
		m.Observe(f)
	}
	_, body := get(t, serve(t, m, nil)+"/metrics")

	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`sluice_[a-z_]+[a-z]`)
	documented := name.FindAllString(string(doc), -1)
	served := regexp.MustCompile(`(?m)^# TYPE (sluice_[a-z_]+) (\w+)`).FindAllStringSubmatch(body, -1)
	if len(served) == 0 {
		t.Fatal("/metrics has no sluice_ metrics")
	}
	var servedNames []string
	for _, s := range served {
		servedNames = append(servedNames, s[1])
		if s[2] == "histogram" { // its series, which queries name
			servedNames = append(servedNames, s[1]+"_bucket", s[1]+"_sum", s[1]+"_count")
		}
		if !slices.Contains(documented, s[1]) {
			t.Errorf("%s is served but not in docs/metrics.md", s[1])
		}
	}
	for _, d := range documented {
		if !slices.Contains(servedNames, d) {
			t.Errorf("docs/metrics.md names %s, which is not served", d)
		}
	}
	for _, std := range []string{"go_goroutines", "process_start_time_seconds"} {
		if !strings.Contains(body, "# TYPE "+std+" ") {
			t.Errorf("/metrics lacks %s", std)
		}
	}
}
