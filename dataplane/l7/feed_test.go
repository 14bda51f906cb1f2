package l7

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/dataplane/model"
)

func feedService(name, vip string, path string) model.Service {
	return model.Service{Name: name, VIP: netip.MustParseAddr(vip), Port: 80, Protocol: model.TCP,
		L7: &model.L7{RouteConfig: "rc", Routes: &model.HTTPRoutes{Name: "rc", VirtualHosts: []model.VirtualHost{{
			Name: "all", Domains: []string{"*"}, Routes: []model.HTTPRoute{{
				Match:  model.HTTPMatch{PathKind: model.PathRegex, PathRegex: regexp.MustCompile("^(?:" + path + ")$")},
				Action: model.HTTPAction{Clusters: []model.WeightedCluster{{Name: "c", Weight: 1}}, Timeout: time.Second}}}}}},
			Clusters: []model.Cluster{{Name: "c", Endpoints: []model.Endpoint{{Addr: netip.MustParseAddr("10.244.1.5"), Port: 8080}}}}}}
}

// TestFeed follows a feed over HTTP: the snapshot in force at once, each
// new one, none for an unchanged state, L4 services left out, and again
// after the agent's server goes away and comes back.
func TestFeed(t *testing.T) {
	f := NewFeed()
	l4 := model.Service{Name: "l4", VIP: netip.MustParseAddr("10.96.0.9"), Port: 80, Protocol: model.TCP}
	names := map[uint32]string{7: "spiffe://td/ns/a/sa/b"}
	if err := f.Publish([]model.Service{l4, feedService("web", "10.96.0.1", "/a/[0-9]+")}, names); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.Listener.Addr().String())
	}}}
	got := make(chan *Snapshot, 10)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Follow(ctx, client, func(s *Snapshot) error { got <- s; return nil }, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	next := func() *Snapshot {
		t.Helper()
		select {
		case s := <-got:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no snapshot")
			return nil
		}
	}
	s := next()
	if s.Version != 1 || len(s.Services) != 1 || s.Services[0].Name != "web" || s.Identities[7] != names[7] {
		t.Fatalf("first snapshot: %+v, want version 1 with web only and the identities", s)
	}
	re := s.Services[0].L7.Routes.VirtualHosts[0].Routes[0].Match.PathRegex
	if re == nil || !re.MatchString("/a/12") || re.MatchString("/a/x") {
		t.Fatalf("the path regex did not survive the feed: %v", re)
	}
	// The same state again: nothing is sent.
	if err := f.Publish([]model.Service{l4, feedService("web", "10.96.0.1", "/a/[0-9]+")}, names); err != nil {
		t.Fatal(err)
	}
	if err := f.Publish([]model.Service{feedService("web", "10.96.0.1", "/b")}, names); err != nil {
		t.Fatal(err)
	}
	if s := next(); s.Version != 2 || s.Services[0].L7.Routes.VirtualHosts[0].Routes[0].Match.PathRegex.String() != "^(?:/b)$" {
		t.Fatalf("second snapshot: version %d, want 2 with the new route", s.Version)
	}
	// The follower's connection is cut (an agent restart): it comes back
	// and gets the snapshot in force.
	srv.CloseClientConnections()
	if s := next(); s.Version != 2 {
		t.Fatalf("after reconnecting: version %d, want 2", s.Version)
	}
}
