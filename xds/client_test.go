package xds_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/sluice-mesh/sluice/dataplane/model"
	"github.com/sluice-mesh/sluice/xds"
)

var modes = []xds.Mode{xds.ModeSotW, xds.ModeDelta}

func startClient(t testing.TB, server string, mode xds.Mode, app xds.Applier, tweak ...func(*xds.Options)) *xds.Client {
	t.Helper()
	opts := xds.Options{
		Server:         server,
		Node:           xds.NodeInfo{ID: "test-node", NodeName: "node-1", Version: "test"},
		Applier:        app,
		Mode:           mode,
		BackoffInitial: 20 * time.Millisecond,
		BackoffMax:     200 * time.Millisecond,
	}
	if os.Getenv("SLUICE_TEST_DEBUG") != "" {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	for _, f := range tweak {
		f(&opts)
	}
	c, err := xds.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client Run: %v", err)
		}
	})
	return c
}

// synced starts a control plane serving m as version "1" and a client in
// mode, and waits until the client has applied m. It returns the number of
// states applied by then.
func synced(t testing.TB, mode xds.Mode, m mesh, tweak ...func(*xds.Options)) (*controlPlane, *recorder, *xds.Client, int) {
	t.Helper()
	cp := newControlPlane(t)
	cp.set("1", m)
	rec := &recorder{}
	c := startClient(t, cp.addr, mode, rec, tweak...)
	return cp, rec, c, waitApplied(t, rec, m.summary())
}

func waitApplied(t testing.TB, rec *recorder, want string) int {
	t.Helper()
	var got string
	var n int
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, n = rec.last()
		if got == want {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("applied state:\n%s\nwant:\n%s", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var (
	webV1 = svc{"demo/web:80", "10.96.0.10", 80, []string{"10.244.0.11:8080", "10.244.0.12:8080"}}
	webV2 = svc{"demo/web:80", "10.96.0.10", 80, []string{"10.244.0.12:8080", "10.244.0.13:8080"}}
	db    = svc{"demo/db:5432", "10.96.0.20", 5432, []string{"10.244.1.1:5432"}}
	cache = svc{"demo/cache:6379", "fd00:96::30", 6379, []string{"[fd00:244::5]:6379"}}
)

func TestSyncAddUpdateRemove(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			v1 := mesh{services: []svc{webV1, db}}
			cp, rec, c, _ := synced(t, mode, v1)

			// Update web's endpoints, remove db, add an IPv6 service.
			v2 := mesh{services: []svc{webV2, cache}}
			cp.set("2", v2)
			waitApplied(t, rec, v2.summary())
			// The status follows the Applier's return.
			waitFor(t, "the status of the applied state", func() bool { return c.Status().Services == 2 })

			st := c.Status()
			if !st.Connected || !st.Applied || st.Services != 2 || st.NACKs != 0 {
				t.Errorf("status %+v", st)
			}
			if st.Resources["LDS"] != 2 || st.Resources["CDS"] != 2 || st.Resources["EDS"] != 2 {
				t.Errorf("accepted resources %v, want 2 of each (removed ones dropped)", st.Resources)
			}
			if mode == xds.ModeSotW && (st.Versions["LDS"] != "2" || st.Versions["CDS"] != "2" || st.Versions["EDS"] != "2") {
				t.Errorf("accepted versions %v, want 2 for each type", st.Versions)
			}
			if len(cp.nackMessages()) != 0 {
				t.Errorf("server received NACKs: %v", cp.nackMessages())
			}
		})
	}
}

// TestDirectoryChangeApplied checks that a change of a workload directory
// alone, no service changing, is applied, and that Reapply hands the
// Applier the peers again.
func TestDirectoryChangeApplied(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			v1 := mesh{services: []svc{webV1}, peers: []string{"10.244.9.1 spiffe://td/ns/jobs/sa/batch"}}
			cp, rec, c, _ := synced(t, mode, v1)
			v2 := mesh{services: []svc{webV1}, peers: []string{"10.244.9.2 spiffe://td/ns/jobs/sa/batch", "fd00::9 spiffe://td/ns/jobs/sa/cron"}}
			cp.set("2", v2)
			_, n := rec.last()
			waitApplied(t, rec, v2.summary())
			c.Reapply()
			waitFor(t, "the state applied again", func() bool {
				got, m := rec.last()
				return m > n+1 && got == v2.summary()
			})
		})
	}
}

// An L7 service's route configuration is subscribed once its listener is
// accepted (the listener waits for it, warming), translated with its
// clusters, and followed as it changes; a refused one is NACKed naming it.
func TestL7RoutesFollowed(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			api := l7svc{"demo/api:80", "10.96.0.40", 80, webV1.name}
			v1 := mesh{services: []svc{webV1, db}, l7: []l7svc{api}}
			cp, rec, c, _ := synced(t, mode, v1)
			// The status follows the Applier's return.
			waitFor(t, "the status of the applied state", func() bool { return c.Status().Applied })
			if st := c.Status(); st.Resources["RDS"] != 1 || st.NACKs != 0 {
				t.Errorf("status %+v: want one route configuration accepted, no NACK", st)
			}

			// The routes change to the other cluster.
			api.cluster = db.name
			v2 := mesh{services: []svc{webV1, db}, l7: []l7svc{api}}
			cp.set("2", v2)
			waitApplied(t, rec, v2.summary())

			// A refused route configuration is NACKed and the routes
			// before stay in force.
			_, applies := rec.last()
			bad := v2.resources()
			bad[resourcev3.RouteType] = []types.Resource{routeConfig("demo/api:80-routes", "sluice.io/workloads")}
			snap, err := cachev3.NewSnapshot("3", bad)
			if err != nil {
				t.Fatal(err)
			}
			if err := cp.cache.SetSnapshot(context.Background(), "mesh", snap); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "a NACK at the server", func() bool { return len(cp.nackMessages()) > 0 })
			if msg := cp.nackMessages()[0]; !strings.Contains(msg, `RouteConfiguration "demo/api:80-routes"`) {
				t.Errorf("NACK error_detail %q does not name the route configuration", msg)
			}
			if st := c.Status(); st.LastNACK == nil || st.LastNACK.Type != "RDS" {
				t.Errorf("status does not report the RDS NACK: %+v", st.LastNACK)
			}
			if got, n := rec.last(); got != v2.summary() || n != applies {
				t.Errorf("after the NACK the applier got %d states (had %d), last:\n%s\nwant:\n%s", n, applies, got, v2.summary())
			}

			// The L7 service goes.
			v4 := mesh{services: []svc{webV1, db}}
			cp.set("4", v4)
			waitApplied(t, rec, v4.summary())
		})
	}
}

// A response Sluice cannot honour is NACKed with an error naming the
// resource and field, and the previous state stays applied; a later good
// response is applied.
func TestNACKKeepsPreviousState(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			good := mesh{services: []svc{webV1}}
			cp, rec, c, applies := synced(t, mode, good)

			bad := mesh{services: []svc{webV1, db}, extra: []types.Resource{refusedListener("demo/api:80", "10.96.0.40", 80)}}
			cp.set("2", bad)
			waitFor(t, "a NACK at the server", func() bool { return len(cp.nackMessages()) > 0 })
			msg := cp.nackMessages()[0]
			for _, want := range []string{`Listener "demo/api:80"`, "filter_chains[0].filters[0]"} {
				if !strings.Contains(msg, want) {
					t.Errorf("NACK error_detail %q does not name %s", msg, want)
				}
			}
			if got, n := rec.last(); got != good.summary() || n != applies {
				t.Errorf("after the NACK the applier got %d states (had %d), last:\n%s\nwant the previous one:\n%s", n, applies, got, good.summary())
			}
			if st := c.Status(); st.LastNACK == nil || st.LastNACK.Type != "LDS" || st.NACKs == 0 || st.CapacityNACKs != 0 {
				t.Errorf("status does not report the NACK (as one not of capacity): %+v", st)
			}

			fixed := mesh{services: []svc{webV1, db}}
			cp.set("3", fixed)
			waitApplied(t, rec, fixed.summary())
		})
	}
}

// A resource named with megabytes is refused (names end up in every flow
// record and metric series of a service), and an error quoting megabytes
// is cut before the NACK carries it; the previous state stays.
func TestHugeInputNACKedBriefly(t *testing.T) {
	huge := strings.Repeat("x", 5<<20)
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			good := mesh{services: []svc{webV1}}
			cp, rec, c, applies := synced(t, mode, good)

			for i, bad := range []struct {
				listener *listenerv3.Listener
				want     string
			}{
				{tcpListener("demo/"+huge+":80", "10.96.0.40", 80, "demo/web:80"), "the name has 5242888 bytes, at most 1024"},
				{tcpListener("demo/api:80", huge, 80, "demo/web:80"), "bytes in all)"},
			} {
				cp.set(fmt.Sprint(i+2), mesh{services: []svc{webV1}, extra: []types.Resource{bad.listener}})
				waitFor(t, "a NACK saying "+bad.want, func() bool {
					return slices.ContainsFunc(cp.nackMessages(), func(m string) bool { return strings.Contains(m, bad.want) })
				})
				for _, msg := range cp.nackMessages() {
					if len(msg) > 5000 {
						t.Errorf("NACK of %d bytes %.200q..., want at most 5000", len(msg), msg)
					}
				}
				if st := c.Status(); st.LastNACK == nil || len(st.LastNACK.Error) > 5000 {
					t.Errorf("status keeps a NACK error of %d bytes", len(st.LastNACK.Error))
				}
				if got, n := rec.last(); got != good.summary() || n != applies {
					t.Errorf("after the NACK the applier got %d states (had %d), last:\n%s", n, applies, got)
				}
			}
		})
	}
}

// A state the dataplane refuses (its Apply fails) is NACKed with the
// dataplane's error, and nothing changes.
func TestApplyErrorIsNACKed(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			good := mesh{services: []svc{webV1}}
			cp, rec, c, _ := synced(t, mode, good)

			rec.setFail(&model.EntryError{Entry: `service "demo/db:5432" (10.96.0.20:5432/TCP)`,
				Reason: "backend capacity 1 exhausted", Class: model.ErrCapacity})
			cp.set("2", mesh{services: []svc{webV1, db}})
			waitFor(t, "a NACK", func() bool { return len(cp.nackMessages()) > 0 })
			if msg := cp.nackMessages()[0]; !strings.Contains(msg, "backend capacity 1 exhausted") {
				t.Errorf("NACK %q does not carry the dataplane's reason", msg)
			}
			if got, _ := rec.last(); got != good.summary() {
				t.Errorf("state changed after a refused apply:\n%s", got)
			}
			if st := c.Status(); st.NACKs == 0 || st.CapacityNACKs != st.NACKs {
				t.Errorf("%d NACKs, %d of them for capacity; want all of them", st.NACKs, st.CapacityNACKs)
			}

			// Any other refusal is not a capacity NACK. (A SotW server
			// sends a NACKed response again at once, so capacity NACKs
			// may still be counted until the new refusal is seen; all
			// NACKs so far were for capacity.)
			rec.setFail(errors.New(`service "demo/db:5432" (10.96.0.20:5432/TCP): no usable endpoint`))
			cp.set("2b", mesh{services: []svc{webV1, db, cache}})
			waitFor(t, "a NACK of another class", func() bool {
				n := c.Status().LastNACK
				return n != nil && strings.Contains(n.Error, "no usable endpoint")
			})
			if st := c.Status(); st.NACKs-st.CapacityNACKs == 0 {
				t.Errorf("a refusal of another class counted as capacity: %d NACKs, all %d for capacity", st.NACKs, st.CapacityNACKs)
			}

			// The dataplane takes states again; the next change builds on
			// what was applied, not on the refused state, whose resources
			// the client must still be able to translate.
			rec.setFail(nil)
			next := mesh{services: []svc{webV2, db, cache}}
			cp.set("3", next)
			waitApplied(t, rec, next.summary())
			back := mesh{services: []svc{webV1}}
			cp.set("4", back)
			waitApplied(t, rec, back.summary())
		})
	}
}

// The control plane restarts with the same configuration: the client
// reconnects; with Delta nothing is sent again and nothing is re-applied.
// Then the restarted control plane changes its configuration: it converges.
func TestServerRestart(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			v1 := mesh{services: []svc{webV1, db}}
			cp, rec, c, applies := synced(t, mode, v1)

			cp.stop()
			waitFor(t, "the client to notice", func() bool { return !c.Status().Connected })
			cp.restart()
			waitFor(t, "the client to reconnect", func() bool { return c.Status().Connected && c.Status().Reconnects > 0 })
			// Give the server time to answer if it were going to.
			time.Sleep(200 * time.Millisecond)
			got, n := rec.last()
			if got != v1.summary() {
				t.Fatalf("state after restart:\n%s", got)
			}
			if mode == xds.ModeDelta && n != applies {
				t.Errorf("delta reconnect to an unchanged server re-applied the state (%d applies, had %d)", n, applies)
			}

			v2 := mesh{services: []svc{webV2}}
			cp.set("2", v2)
			waitApplied(t, rec, v2.summary())
		})
	}
}

// The control plane is not there when the agent starts; the client keeps
// trying and converges once it comes up.
func TestControlPlaneUnavailableAtStart(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := lis.Addr().String()
			lis.Close() // nothing listens there now

			rec := &recorder{}
			c := startClient(t, addr, mode, rec)
			waitFor(t, "failed attempts", func() bool { return c.Status().Reconnects >= 2 })
			if _, n := rec.last(); n != 0 {
				t.Fatalf("applied %d states with no control plane", n)
			}

			cp := newControlPlaneAt(t, addr)
			v1 := mesh{services: []svc{webV1}}
			cp.set("1", v1)
			waitApplied(t, rec, v1.summary())
		})
	}
}

// A control plane that is unreachable for long is redialled at the
// client's pace (BackoffInitial up to BackoffMax), not on gRPC's own
// schedule, which would wait up to 120 s between dials and so keep the
// client away from a control plane that came back long after it is up. A
// listener that accepts and drops every connection counts the dials: gRPC's
// default schedule makes at most 6 in 15 s, the client's (200 ms at most
// apart here) 10 in about 2 s.
func TestRedialsAtTheClientsPace(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	var dials atomic.Int32
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()
	c := startClient(t, lis.Addr().String(), xds.ModeDelta, &recorder{})
	waitFor(t, "10 dials of a control plane that drops every connection", func() bool { return dials.Load() >= 10 })
	if st := c.Status(); st.Connected || st.LastError == "" {
		t.Errorf("status %+v: want disconnected, with the error", st)
	}
}

// Listeners and clusters arrive before the assignments: the client waits
// (warming) instead of applying services without endpoints, and applies
// without them once the warming timeout passes.
func TestWarmingWaitsForAssignments(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			cp := newControlPlane(t)
			partial := mesh{services: []svc{webV1}, noCLA: true}
			cp.set("1", partial)
			rec := &recorder{}
			c := startClient(t, cp.addr, mode, rec, func(o *xds.Options) { o.WarmingTimeout = 300 * time.Millisecond })
			// Listeners come at most a second later (no assignments to wait for).
			waitFor(t, "warming on missing assignments", func() bool { st := c.Status(); return st.Warming && len(st.Missing) > 0 })
			if _, n := rec.last(); n != 0 {
				t.Fatal("applied a state while its assignments were missing")
			}
			if st := c.Status(); len(st.Missing) != 1 || !strings.Contains(st.Missing[0], "demo/web:80") {
				t.Errorf("missing = %v", st.Missing)
			}
			// After the timeout the service is applied without endpoints.
			waitApplied(t, rec, partial.summary())

			full := mesh{services: []svc{webV1}}
			cp.set("2", full)
			waitApplied(t, rec, full.summary())
			if st := c.Status(); st.Warming || len(st.Missing) != 0 {
				t.Errorf("still warming after the assignment came: %+v", st)
			}
		})
	}
}

// An assignment a listener waits for comes and is refused (here by the
// Applier, as the dataplane refuses one that does not fit): the listener
// goes on waiting as if it had not come, and is applied without endpoints
// once the warming timeout ends. Delta only: over SotW, go-control-plane
// answers a NACK with the refused response again, which is then applied
// once the Applier takes it.
func TestWarmingOutlastsARefusedAssignment(t *testing.T) {
	cp := newControlPlane(t)
	partial := mesh{services: []svc{webV1}, noCLA: true}
	cp.set("1", partial)
	rec := &recorder{}
	c := startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.WarmingTimeout = time.Second })
	waitFor(t, "warming on missing assignments", func() bool { return c.Status().Warming })

	rec.setFail(&model.EntryError{Entry: `service "demo/web:80"`, Reason: "too big", Class: model.ErrCapacity})
	cp.set("2", mesh{services: []svc{webV1}})
	waitFor(t, "a NACK", func() bool { return c.Status().NACKs > 0 })
	rec.setFail(nil)
	waitApplied(t, rec, partial.summary())
	if st := c.Status(); st.Warming || !st.Applied {
		t.Errorf("status %+v: want applied, not warming", st)
	}
}

// A 10,000-service snapshot is received, translated and applied.
func TestLargeSnapshot(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			cp := newControlPlane(t)
			big := bigMesh(10000, 10)
			start := time.Now()
			cp.set("1", big)
			rec := &recorder{}
			c := startClient(t, cp.addr, mode, rec)
			waitFor(t, "10k services applied", func() bool { return c.Status().Services == 10000 })
			t.Logf("%s: 10,000 services x 10 endpoints applied %v after the snapshot was set", mode, time.Since(start).Round(time.Millisecond))
			if got, _ := rec.last(); got != big.summary() {
				t.Error("applied state differs from the snapshot")
			}
		})
	}
}

func bigMesh(services, endpoints int) mesh {
	m := mesh{services: make([]svc, services)}
	for i := range services {
		s := svc{
			name: fmt.Sprintf("ns%d/svc%d:80", i%50, i),
			vip:  fmt.Sprintf("10.96.%d.%d", i/250, i%250+1),
			port: 80,
		}
		for j := range endpoints {
			s.endpoints = append(s.endpoints, fmt.Sprintf("10.%d.%d.%d:8080", 100+i/60000, (i/250)%240, (i%250)*0+j+1+10*(i%20)))
		}
		m.services[i] = s
	}
	return m
}

// The client requests clusters first, then their assignments, and
// listeners only once those are in, as Envoy does at start.
func TestRequestOrder(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			v1 := mesh{services: []svc{webV1, db}}
			cp, _, _, _ := synced(t, mode, v1)
			want := []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType}
			if got := cp.requestOrder(); !slices.Equal(got, want) {
				t.Errorf("first requests by type: %v, want %v", got, want)
			}
		})
	}
}

// The node the control plane sees carries the identity given to the client.
func TestNodeIdentity(t *testing.T) {
	cp := newControlPlane(t)
	v1 := mesh{services: []svc{webV1}}
	cp.set("1", v1)
	rec := &recorder{}
	startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) {
		o.Node = xds.NodeInfo{ID: "agent-7", Cluster: "prod", NodeName: "node-7", Version: "v1.2.3",
			Locality: model.Locality{Region: "eu", Zone: "eu-1a", SubZone: "rack4"}}
	})
	waitApplied(t, rec, v1.summary())
	n := cp.firstNode()
	md := n.GetMetadata().GetFields()
	if n.GetId() != "agent-7" || n.GetCluster() != "prod" || n.GetUserAgentName() != "sluice" || n.GetUserAgentVersion() != "v1.2.3" ||
		n.GetLocality().GetRegion() != "eu" || n.GetLocality().GetZone() != "eu-1a" || n.GetLocality().GetSubZone() != "rack4" ||
		md["node_name"].GetStringValue() != "node-7" || md["agent_version"].GetStringValue() != "v1.2.3" {
		t.Errorf("node seen by the control plane: %v", n)
	}
}

// With CollectWhenIdle, a client that has handled a response and heard
// nothing more collects the garbage the heap holds; without it, it does
// not. The runtime's own collections are off, so only the client collects.
func TestCollectWhenIdle(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	numGC := func() uint32 {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.NumGC
	}
	for _, idle := range []time.Duration{0, 20 * time.Millisecond} {
		t.Run(fmt.Sprint("idle=", idle), func(t *testing.T) {
			cp := newControlPlane(t)
			v1, v2 := mesh{services: []svc{webV1}}, mesh{services: []svc{webV2}}
			cp.set("1", v1)
			rec := &recorder{}
			startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.CollectWhenIdle = idle })
			waitApplied(t, rec, v1.summary())
			time.Sleep(100 * time.Millisecond) // any collection of the first sync is over
			runtime.GC()
			garbage := make([][]byte, 64)
			for i := range garbage {
				garbage[i] = make([]byte, 1<<20)
			}
			garbage = nil
			before := numGC()
			cp.set("2", v2)
			waitApplied(t, rec, v2.summary())
			wait := 300 * time.Millisecond // a collection takes a few ms here
			if idle > 0 {
				wait = 5 * time.Second
			}
			collected := false
			for deadline := time.Now().Add(wait); !collected && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				collected = numGC() > before
			}
			if collected != (idle > 0) {
				t.Errorf("collected: %v, want %v", collected, idle > 0)
			}
			_ = garbage
		})
	}
}

// DialOptions reach the connection: a stats handler given there sees the
// responses.
func TestDialOptions(t *testing.T) {
	cp := newControlPlane(t)
	v1 := mesh{services: []svc{webV1}}
	cp.set("1", v1)
	rec := &recorder{}
	var h countingHandler
	startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.DialOptions = []grpc.DialOption{grpc.WithStatsHandler(&h)} })
	waitApplied(t, rec, v1.summary())
	if h.received.Load() == 0 {
		t.Error("the stats handler given in DialOptions saw no message")
	}
}

type countingHandler struct{ received atomic.Int64 }

func (h *countingHandler) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.InPayload); ok {
		h.received.Add(1)
	}
}
func (h *countingHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return ctx
}
func (h *countingHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (h *countingHandler) HandleConn(context.Context, stats.ConnStats) {}

// An unreachable control plane is one warning, not one per attempt; the
// stream's return is logged.
func TestOneWarningPerOutage(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	logs := &lockedBuffer{}
	rec := &recorder{}
	c := startClient(t, addr, xds.ModeDelta, rec, func(o *xds.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	waitFor(t, "failed attempts", func() bool { return c.Status().Reconnects >= 4 })
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings over %d attempts, want 1:\n%s", n, c.Status().Reconnects, logs.String())
	}
	cp := newControlPlaneAt(t, addr)
	v1 := mesh{services: []svc{webV1}}
	cp.set("1", v1)
	waitApplied(t, rec, v1.summary())
	waitFor(t, "established logged", func() bool { return strings.Contains(logs.String(), "xds stream established") })
}

// lockedBuffer is a log destination written by the client's goroutine
// and read by the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A SotW server sends a NACKed response again at once; the agent logs the
// refusal once, not once per round.
func TestRepeatedRejectionLoggedOnce(t *testing.T) {
	logs := &lockedBuffer{}
	good := mesh{services: []svc{webV1}}
	cp, rec, c, _ := synced(t, xds.ModeSotW, good, func(o *xds.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	rec.setFail(errors.New(`service "demo/db:5432": no usable endpoint`))
	cp.set("2", mesh{services: []svc{webV1, db}})
	waitFor(t, "the refusal repeated", func() bool { return c.Status().NACKs >= 3 })
	if n := strings.Count(logs.String(), "xds response rejected"); n != 1 {
		t.Fatalf("%d log lines for %d NACKs of one refusal, want 1:\n%s", n, c.Status().NACKs, logs.String())
	}
}

// The client pings a silent connection as often as Options.Keepalive says:
// a server whose policy allows one ping per 20 s closes the connection of
// a client pinging every 10 s ("too_many_pings"), and the client
// reconnects; at 30 s it keeps the connection. The default is what gRPC
// servers allow unless configured otherwise.
func TestKeepalive(t *testing.T) {
	if xds.DefaultKeepalive < 5*time.Minute {
		t.Errorf("default keepalive %v: gRPC servers' default policy refuses pings more often than every 5m", xds.DefaultKeepalive)
	}
	if _, err := xds.New(xds.Options{Server: "x", Node: xds.NodeInfo{ID: "n"}, Applier: &recorder{}, Keepalive: time.Second}); err == nil || !strings.Contains(err.Error(), "keepalive 1s") {
		t.Errorf("a 1s keepalive: %v, want an error naming it", err)
	}
	if testing.Short() {
		t.Skip("-short: the keepalive exchange takes a minute")
	}
	policy := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true})
	m := mesh{services: []svc{webV1}}
	for _, tc := range []struct {
		every     time.Duration
		reconnect bool
	}{{10 * time.Second, true}, {30 * time.Second, false}} {
		t.Run(tc.every.String(), func(t *testing.T) {
			t.Parallel()
			cp := newControlPlane(t, policy)
			cp.set("1", m)
			rec := &recorder{}
			c := startClient(t, cp.addr, xds.ModeDelta, rec, func(o *xds.Options) { o.Keepalive = tc.every })
			waitApplied(t, rec, m.summary())
			// More than two pings too early end the connection: within
			// 40 s at one per 10 s.
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) && c.Status().Reconnects == 0 {
				time.Sleep(100 * time.Millisecond)
			}
			if got := c.Status().Reconnects > 0; got != tc.reconnect {
				t.Errorf("pinging every %v against a server allowing one per 20s: reconnected %v, want %v", tc.every, got, tc.reconnect)
			}
		})
	}
}
