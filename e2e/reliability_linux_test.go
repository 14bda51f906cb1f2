package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/probe"
	"github.com/sluice-mesh/sluice/e2e/testenv"
	"github.com/sluice-mesh/sluice/sockops/flow"
	"github.com/sluice-mesh/sluice/sockops/observe"
	"github.com/sluice-mesh/sluice/xds/mesh"
)

// The reliability tests run the real agent binary through what production
// does to it — kill -9, a control plane that goes away, hostile xDS, maps
// that are too small — while pods keep real traffic going through it.

// steadyEnv makes a child of the test binary the steady client
// (steadyRole); its value is the address of the echo service the
// long-lived connections use.
const steadyEnv = "SLUICE_TEST_STEADY"

func init() {
	// The package's TestMain runs the probe's roles; this role is the
	// reliability tests' own and runs before it.
	if os.Getenv(steadyEnv) != "" {
		os.Exit(steadyRole())
	}
}

// steadyReport is what the steady client saw since it started.
type steadyReport struct {
	New      steadyCount    // new connections: dialled, asked once, closed
	Answers  map[string]int // new connections by the name of the server that answered
	Existing steadyCount    // round trips on the long-lived connections
	Open     int            // long-lived connections still open
}

// steadyCount counts attempts that worked and those that failed.
type steadyCount struct {
	OK       int
	Failed   int
	Failures []string // the first few, each with the time it happened
}

func (c *steadyCount) add(err error) {
	if err == nil {
		c.OK++
		return
	}
	c.Failed++
	if len(c.Failures) < 10 {
		c.Failures = append(c.Failures, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

// steadyRole keeps traffic going until it reads "stop": ConnsEnv
// long-lived connections to the echo service steadyEnv names, each making
// a 64-byte round trip every 20 ms and checking the echo, and two loops of
// new connections to DialEnv (the probe's server role), each sending one
// line and reading the server's name. For every line "report" on stdin it
// prints what it saw so far as JSON; after "stop" (or the end of stdin) it
// prints the final report and exits.
func steadyRole() int {
	newAddr, echoAddr := os.Getenv(probe.DialEnv), os.Getenv(steadyEnv)
	conns, _ := strconv.Atoi(os.Getenv(probe.ConnsEnv))
	var mu sync.Mutex
	rep := steadyReport{Answers: map[string]int{}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pause := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-stop:
			return false
		case <-t.C:
			return true
		}
	}
	for i := range conns {
		c, err := net.DialTimeout("tcp", echoAddr, 5*time.Second)
		if err != nil {
			fmt.Fprintf(os.Stderr, "long-lived connection %d: %v\n", i, err)
			return 1
		}
		rep.Open++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			msg := bytes.Repeat([]byte{byte('a' + i%26)}, 64)
			back := make([]byte, len(msg))
			for pause(20 * time.Millisecond) {
				err := roundTrip(c, msg, back)
				mu.Lock()
				rep.Existing.add(err)
				if err != nil {
					rep.Open--
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for pause(10 * time.Millisecond) {
				name, err := askName(newAddr)
				mu.Lock()
				rep.New.add(err)
				if err == nil {
					rep.Answers[name]++
				}
				mu.Unlock()
			}
		}()
	}
	fmt.Println("ready")
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() && in.Text() != "stop" {
		mu.Lock()
		_ = enc.Encode(rep)
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
	_ = enc.Encode(rep)
	return 0
}

// roundTrip sends msg on c and reads it back into back.
func roundTrip(c net.Conn, msg, back []byte) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := io.ReadFull(c, back); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if !bytes.Equal(msg, back) {
		return fmt.Errorf("echo %q, sent %q", back, msg)
	}
	return nil
}

// askName opens a connection to addr, sends a line and returns the answer.
func askName(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, probe.Line); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	return strings.TrimSpace(line), nil
}

// steadyClient is steadyRole running in a pod.
type steadyClient struct {
	t      *testing.T
	stdin  io.WriteCloser
	lines  *bufio.Scanner
	stderr *syncBuffer
}

// startSteady runs the steady client in pod: new connections to newAddr,
// conns long-lived ones to echoAddr.
func startSteady(t *testing.T, pod *cluster.Pod, newAddr, echoAddr string, conns int) *steadyClient {
	t.Helper()
	cmd := pod.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), steadyEnv+"="+echoAddr, probe.DialEnv+"="+newAddr, probe.ConnsEnv+"="+strconv.Itoa(conns))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &steadyClient{t: t, stdin: stdin, lines: bufio.NewScanner(stdout), stderr: &syncBuffer{}}
	cmd.Stderr = s.stderr
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	if !s.lines.Scan() || s.lines.Text() != "ready" {
		t.Fatalf("steady client in %s: %q %s", pod.Name, s.lines.Text(), s.stderr)
	}
	return s
}

func (s *steadyClient) ask(cmd string) steadyReport {
	s.t.Helper()
	fmt.Fprintln(s.stdin, cmd)
	if !s.lines.Scan() {
		s.t.Fatalf("steady client ended: %v %s", s.lines.Err(), s.stderr)
	}
	var r steadyReport
	if err := json.Unmarshal(s.lines.Bytes(), &r); err != nil {
		s.t.Fatalf("steady client report %q: %v", s.lines.Text(), err)
	}
	return r
}

// report returns what the client saw so far.
func (s *steadyClient) report() steadyReport { return s.ask("report") }

// stop ends the traffic and returns the final report.
func (s *steadyClient) stop() steadyReport { return s.ask("stop") }

// grew waits until the client has made at least n more new connections
// and n more round trips on its long-lived connections than in from.
func (s *steadyClient) grew(logs map[string]*syncBuffer, what string, from steadyReport, n int) steadyReport {
	s.t.Helper()
	var r steadyReport
	waitFor(s.t, logs, what, func() bool {
		r = s.report()
		return r.New.OK+r.New.Failed >= from.New.OK+from.New.Failed+n && r.Existing.OK+r.Existing.Failed >= from.Existing.OK+from.Existing.Failed+n
	})
	return r
}

// serveName runs the probe's server role in pod on port 5432, answering
// every line with name.
func serveName(t *testing.T, pod *cluster.Pod, name string) {
	t.Helper()
	cmd := pod.Command(context.Background(), os.Args[0])
	cmd.Env = append(os.Environ(), probe.RoleEnv+"=server", probe.ListenEnv+"=0.0.0.0:5432", probe.NameEnv+"="+name)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pod.Start(cmd); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(out)
	if line, _ := r.ReadString('\n'); line != "ready\n" {
		t.Fatalf("server in %s: %q", pod.Name, line)
	}
	go io.Copy(io.Discard, r)
}

// daemon is a long-running process of the sluice binary that a test can
// kill -9 and start again with the same arguments. Its log (stderr) is
// kept across restarts.
type daemon struct {
	name   string
	argv   []string
	log    *syncBuffer
	cmd    *exec.Cmd
	exited chan struct{}
}

// startDaemon starts argv; it is interrupted when the test ends.
func startDaemon(t *testing.T, name string, argv ...string) *daemon {
	t.Helper()
	d := &daemon{name: name, argv: argv, log: &syncBuffer{}}
	d.start(t)
	t.Cleanup(func() {
		if !d.running() {
			return
		}
		_ = d.cmd.Process.Signal(os.Interrupt)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not stop within 10 s of SIGINT; killed", d.name)
			_ = d.cmd.Process.Kill()
			<-d.exited
		}
	})
	return d
}

// start starts the process (again).
func (d *daemon) start(t *testing.T) {
	t.Helper()
	if d.cmd != nil {
		fmt.Fprintf(d.log, "--- %s started again\n", d.name)
	}
	d.cmd = exec.Command(d.argv[0], d.argv[1:]...)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	d.exited = exited
	cmd := d.cmd
	go func() { _ = cmd.Wait(); close(exited) }()
}

// kill9 kills the process with SIGKILL: it gets no chance to clean up.
func (d *daemon) kill9(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s: %v", d.name, err)
	}
	<-d.exited
	fmt.Fprintf(d.log, "--- %s killed with SIGKILL\n", d.name)
}

// running reports whether the process has not exited.
func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// agentProc is one node's agent, with its local API socket and metrics
// address, run as a daemon.
type agentProc struct {
	*daemon
	bin     string
	socket  string
	metrics string // host:port of /metrics and /readyz
}

// launchAgent starts the agent of node, named name, with args added (as
// startAgent, but the agent can be killed and restarted, and serves
// metrics).
func launchAgent(t *testing.T, bin string, node *cluster.Node, name string, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{bin: bin, socket: filepath.Join(t.TempDir(), "agent.sock"), metrics: freePort(t)}
	argv := append([]string{bin, "agent", "--cgroup", node.Cgroup, "--pin-dir", node.PinDir,
		"--node-id", name, "--node-name", name, "--log-level", "debug",
		"--socket", a.socket, "--metrics-addr", a.metrics}, args...)
	a.daemon = startDaemon(t, "agent "+name, argv...)
	return a
}

// status runs `sluice status -o json` against the agent.
func (a *agentProc) status(t *testing.T) observe.Status {
	t.Helper()
	out, err := exec.Command(a.bin, "status", "--socket", a.socket, "-o", "json").Output()
	if err != nil {
		t.Fatalf("sluice status of %s: %v\n%s", a.name, err, a.log)
	}
	var st observe.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("sluice status of %s: %v: %s", a.name, err, out)
	}
	return st
}

// readyz returns the HTTP status of the agent's /readyz, 0 if it does not
// answer.
func (a *agentProc) readyz() int {
	resp, err := httpClient.Get("http://" + a.metrics + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// scrape returns the agent's sluice_ metrics by series, as
// `name{label="value",...}` in the order the exposition writes them.
func (a *agentProc) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := httpClient.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", a.name, err)
	}
	defer resp.Body.Close()
	series := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "sluice_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics of %s: %q: %v", a.name, line, err)
		}
		series[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("scrape %s: %v", a.name, err)
	}
	return series
}

// agentLogs are the logs waitFor prints when it gives up.
func agentLogs(ds ...*daemon) map[string]*syncBuffer {
	logs := map[string]*syncBuffer{}
	for _, d := range ds {
		logs[d.name] = d.log
	}
	return logs
}

// writeFile replaces path with data by a rename, as editors do.
func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// echoMesh is a mesh file with the service echo (VIP vip, port 80 to the
// echo role on 7000 and 5432 to the server role) on the endpoints given,
// and three filler services that give the maps more to hold, so that a
// small change writes less than the whole state.
func echoMesh(vip string, endpoints ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `services:
  - name: echo
    namespace: rel
    vips: [%s]
    ports: [{port: 80, targetPort: 7000}, {port: 5432, targetPort: 5432}]
    endpoints: [`, vip)
	for i, ep := range endpoints {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "{address: %s}", ep)
	}
	b.WriteString("]\n")
	for i := range 3 {
		fmt.Fprintf(&b, `  - name: filler%d
    namespace: rel
    vips: [10.96.9.%d]
    ports: [{port: 80}]
    endpoints: [{address: 10.244.9.%d}, {address: 10.244.9.%d}, {address: 10.244.9.%d}, {address: 10.244.9.%d}]
`, i, i+1, 4*i+1, 4*i+2, 4*i+3, 4*i+4)
	}
	return b.String()
}

// TestAgentKill9 kills both nodes' agents with SIGKILL while a client keeps
// opening new connections through a service VIP and exchanging data on
// long-lived ones, leaves the nodes without agents for a few seconds, and
// starts the agents again with the same arguments. Not one connection
// fails; the new agents adopt the pinned state without writing a map
// entry, are ready, and apply a later edit of the mesh file.
func TestAgentKill9(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{
		{"a", "client", "10.244.1.10"}, {"a", "server-a", "10.244.1.11"}, {"b", "server-b", "10.244.2.11"},
	})
	for _, p := range []string{"server-a", "server-b"} {
		startEcho(t, pods[p])
		serveName(t, pods[p], p)
	}
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshFile, echoMesh("10.96.0.50", "10.244.1.11", "10.244.2.11"))
	agents := []*agentProc{
		launchAgent(t, bin, nodes["a"], "a", "--mesh", meshFile, "--config-poll", "200ms"),
		launchAgent(t, bin, nodes["b"], "b", "--mesh", meshFile, "--config-poll", "200ms"),
	}
	logs := agentLogs(agents[0].daemon, agents[1].daemon)
	waitFor(t, logs, "the agents never became ready", func() bool {
		return agents[0].readyz() == http.StatusOK && agents[1].readyz() == http.StatusOK
	})

	load := startSteady(t, pods["client"], "10.96.0.50:5432", "10.96.0.50:80", 4)
	waitFor(t, logs, "new connections never reached both endpoints", func() bool {
		r := load.report()
		return r.Answers["server-a"] > 0 && r.Answers["server-b"] > 0
	})
	var full []uint64 // what each first agent wrote: the whole state
	for _, a := range agents {
		full = append(full, a.status(t).Dataplane.EntriesWritten)
	}

	for _, a := range agents {
		a.kill9(t)
	}
	killedAt := time.Now()
	killed := load.report()
	time.Sleep(3 * time.Second) // the nodes run without agents
	outage := load.grew(logs, "traffic stalled while no agent ran", killed, 50)
	t.Logf("with no agent running: %d new connections, %d round trips on existing ones",
		outage.New.OK-killed.New.OK, outage.Existing.OK-killed.Existing.OK)
	for _, server := range []string{"server-a", "server-b"} {
		if outage.Answers[server] == killed.Answers[server] {
			t.Errorf("with no agent running, no new connection reached %s: %v, before %v", server, outage.Answers, killed.Answers)
		}
	}

	restartedAt := time.Now()
	for _, a := range agents {
		a.start(t)
	}
	waitFor(t, logs, "the restarted agents never became ready", func() bool {
		return agents[0].readyz() == http.StatusOK && agents[1].readyz() == http.StatusOK
	})
	// The kernel kept the flow events of the outage for the next agent,
	// which reads them as it starts: an open record (at the client's end)
	// for every connection made then, named by the state (those read
	// before it arrived were held until it did).
	var opened, unnamed int
	made := outage.New.OK - killed.New.OK
	waitForWhat(t, logs, func() string {
		return fmt.Sprintf("the restarted agent recorded the opening of %d of the %d connections of the outage", opened, made)
	}, func() bool {
		opened, unnamed = 0, 0
		for _, f := range observeJSON(t, bin, agents[0].socket, "--since", killedAt.Format(time.RFC3339Nano), "--last", "100000") {
			if f.Time.Before(restartedAt) && f.Event == flow.EventOpen && f.Reporter == flow.ReporterSource && f.Source.Address.Addr() == pods["client"].IP {
				opened++
				if f.Service == nil || f.Service.Name == "" {
					unnamed++
				}
			}
		}
		return opened >= made
	})
	if unnamed > 0 {
		t.Errorf("%d of the %d records of the outage name no service", unnamed, opened)
	}
	t.Logf("the restarted agent recorded the opening of %d connections made during the outage", opened)
	for _, a := range agents {
		st := a.status(t)
		if st.Dataplane.EntriesWritten != 0 || st.Services != 5 {
			t.Errorf("agent %s after the restart: %d map entries written, %d services; want 0 written (the state was adopted), 5 services",
				st.Node, st.Dataplane.EntriesWritten, st.Services)
		}
		if !strings.Contains(a.log.String(), "adopted=true") {
			t.Errorf("agent %s did not say it adopted the pinned dataplane", st.Node)
		}
	}
	restarted := load.grew(logs, "traffic stalled after the restart", outage, 50)

	// Endpoint b leaves the service: new connections go to a only.
	writeFile(t, meshFile, echoMesh("10.96.0.50", "10.244.1.11"))
	base := restarted
	waitFor(t, logs, "the restarted agent never applied the edit (new connections still reach server-b)", func() bool {
		r := load.report()
		if r.Answers["server-b"] != base.Answers["server-b"] {
			base = r
			return false
		}
		return r.Answers["server-a"]-base.Answers["server-a"] >= 100
	})
	for i, a := range agents {
		st := a.status(t)
		if w := st.Dataplane.EntriesWritten; w == 0 || w >= full[i] {
			t.Errorf("agent %s wrote %d map entries for the edit; want some, and fewer than the %d of the whole state", st.Node, w, full[i])
		} else {
			t.Logf("agent %s: the whole state took %d map entries, the edit %d", st.Node, full[i], w)
		}
	}

	final := load.stop()
	t.Logf("in all: %d new connections (%v), %d round trips on %d long-lived connections", final.New.OK, final.Answers, final.Existing.OK, 4)
	if final.New.Failed != 0 || final.Existing.Failed != 0 || final.Open != 4 {
		t.Errorf("failures: %d new connections %v; %d round trips on long-lived connections %v; %d of 4 long-lived connections open",
			final.New.Failed, final.New.Failures, final.Existing.Failed, final.Existing.Failures, final.Open)
	}
}

// TestControlPlaneLoss runs a standalone control plane process and two
// agents fed by it, node a's over Delta and node b's over SotW, while
// clients on both nodes keep traffic going. The control plane is killed
// with SIGKILL: traffic goes on, the agents stay ready and say they are
// disconnected. It comes back with the same mesh file: the agents
// reconnect without writing a map entry. It is killed again and comes back
// with a new service: the agents converge on it.
func TestControlPlaneLoss(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{
		{"a", "client-a", "10.244.1.10"}, {"a", "server-a", "10.244.1.11"},
		{"b", "client-b", "10.244.2.10"}, {"b", "server-b", "10.244.2.11"},
	})
	for _, p := range []string{"server-a", "server-b"} {
		startEcho(t, pods[p])
		serveName(t, pods[p], p)
	}
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	mesh := echoMesh("10.96.0.60", "10.244.1.11", "10.244.2.11")
	writeFile(t, meshFile, mesh)
	cpAddr := freePort(t)
	cp := startDaemon(t, "controlplane", bin, "controlplane", "--mesh", meshFile, "--listen", cpAddr,
		"--config-poll", "200ms", "--log-level", "debug")
	agents := []*agentProc{
		launchAgent(t, bin, nodes["a"], "a", "--xds", cpAddr),
		launchAgent(t, bin, nodes["b"], "b", "--xds", cpAddr, "--xds-mode", "sotw"),
	}
	logs := agentLogs(cp, agents[0].daemon, agents[1].daemon)
	waitFor(t, logs, "the agents never became ready", func() bool {
		return agents[0].readyz() == http.StatusOK && agents[1].readyz() == http.StatusOK
	})
	loads := []*steadyClient{
		startSteady(t, pods["client-a"], "10.96.0.60:5432", "10.96.0.60:80", 2),
		startSteady(t, pods["client-b"], "10.96.0.60:5432", "10.96.0.60:80", 2),
	}
	for _, l := range loads {
		waitFor(t, logs, "new connections never reached both endpoints", func() bool {
			r := l.report()
			return r.Answers["server-a"] > 0 && r.Answers["server-b"] > 0
		})
	}
	before := []observe.Status{agents[0].status(t), agents[1].status(t)}

	// The control plane dies.
	killedAt := time.Now()
	cp.kill9(t)
	for _, a := range agents {
		waitFor(t, logs, a.name+" never noticed the control plane was gone", func() bool {
			return a.scrape(t)["sluice_xds_connected"] == 0
		})
	}
	var during []steadyReport
	for _, l := range loads {
		during = append(during, l.report())
	}
	time.Sleep(4 * time.Second) // the nodes run on without a control plane
	for i, l := range loads {
		l.grew(logs, "traffic stalled without a control plane", during[i], 50)
	}
	for i, a := range agents {
		m, st := a.scrape(t), a.status(t)
		if code := a.readyz(); code != http.StatusOK {
			t.Errorf("%s: /readyz %d without a control plane; want 200, the last state is in force", a.name, code)
		}
		if changed := m["sluice_xds_connection_changed_timestamp_seconds"]; m["sluice_xds_connected"] != 0 || changed < float64(killedAt.Unix()) {
			t.Errorf("%s: sluice_xds_connected %v, changed at %v; want 0, changed after %v", a.name, m["sluice_xds_connected"], changed, killedAt.Unix())
		}
		if st.XDS.Connected || st.XDS.LastError == "" || st.Services != before[i].Services || st.XDS.Reconnects <= before[i].XDS.Reconnects {
			t.Errorf("%s without a control plane: connected %v, last error %q, %d services (had %d), %d reconnects (had %d); "+
				"want disconnected, with an error, the same services and attempts to reconnect",
				a.name, st.XDS.Connected, st.XDS.LastError, st.Services, before[i].Services, st.XDS.Reconnects, before[i].XDS.Reconnects)
		}
		t.Logf("%s without a control plane: last error %q, %d reconnects", a.name, st.XDS.LastError, st.XDS.Reconnects)
	}

	// It comes back with the same file: nothing to change.
	down := make([]observe.Status, len(agents))
	for i, a := range agents {
		down[i] = a.status(t)
	}
	cp.start(t)
	back := time.Now()
	for i, a := range agents {
		waitFor(t, logs, a.name+" never reconnected", func() bool {
			st := a.status(t)
			return st.XDS.Connected && st.XDS.Reconnects > down[i].XDS.Reconnects
		})
		t.Logf("%s reconnected %v after the control plane came back", a.name, time.Since(back).Round(10*time.Millisecond))
	}
	time.Sleep(time.Second) // what the control plane sends after a reconnect comes at once
	for i, a := range agents {
		st := a.status(t)
		if st.Dataplane.EntriesWritten != before[i].Dataplane.EntriesWritten || !sameVersions(st.XDS.Applied, before[i].XDS.Applied) {
			t.Errorf("%s (%s) after reconnecting to an unchanged control plane: %d map entries written (had %d), versions %v (had %v)",
				a.name, st.XDS.Mode, st.Dataplane.EntriesWritten, before[i].Dataplane.EntriesWritten, st.XDS.Applied, before[i].XDS.Applied)
		}
	}

	// It dies again and comes back with a new service.
	cp.kill9(t)
	writeFile(t, meshFile, mesh+`  - name: fresh
    namespace: rel
    vips: [10.96.0.61]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.2.11}]
`)
	cp.start(t)
	back = time.Now()
	for _, client := range []string{"client-a", "client-b"} {
		waitFor(t, logs, "the agents never converged on the new service", func() bool {
			r, err := probe.Dial(pods[client], "10.96.0.61:5432")
			return err == nil && r.Result == "ok" && r.Reply == "server-b"
		})
	}
	t.Logf("converged on the changed control plane %v after it came back", time.Since(back).Round(10*time.Millisecond))
	for i, a := range agents {
		st := a.status(t)
		if written := st.Dataplane.EntriesWritten - before[i].Dataplane.EntriesWritten; written == 0 || written >= before[i].Dataplane.EntriesWritten {
			t.Errorf("%s (%s) wrote %d map entries for one new service; want some, and fewer than the %d of the whole state",
				a.name, st.XDS.Mode, written, before[i].Dataplane.EntriesWritten)
		}
	}

	for i, l := range loads {
		final := l.stop()
		t.Logf("client %d: %d new connections (%v), %d round trips on long-lived connections", i, final.New.OK, final.Answers, final.Existing.OK)
		if final.New.Failed != 0 || final.Existing.Failed != 0 || final.Open != 2 {
			t.Errorf("client %d failures: %d new connections %v; %d round trips on long-lived connections %v; %d of 2 long-lived connections open",
				i, final.New.Failed, final.New.Failures, final.Existing.Failed, final.Existing.Failures, final.Open)
		}
	}
}

// sameVersions reports whether two maps of applied versions are equal.
func sameVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// goodMesh is the service TestHostileXDS and TestCapacityExceeded start
// from: rel/good at 10.96.0.70:5432, served by the pod at 10.244.1.11.
const goodMesh = `services:
  - name: good
    namespace: rel
    vips: [10.96.0.70]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.1.11}]
`

// resources renders a mesh file's resources.
func resources(t *testing.T, data string) mesh.Resources {
	t.Helper()
	m, err := mesh.Parse("mesh.yaml", []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	return m.Resources()
}

// plus returns r with the resources given added.
func plus(r mesh.Resources, ls []*listenerv3.Listener, cs []*clusterv3.Cluster, es []*endpointv3.ClusterLoadAssignment) mesh.Resources {
	return mesh.Resources{
		Listeners: append(slices.Clone(r.Listeners), ls...),
		Clusters:  append(slices.Clone(r.Clusters), cs...),
		Endpoints: append(slices.Clone(r.Endpoints), es...),
	}
}

// TestHostileXDS feeds one agent, from a control plane in the test process,
// responses it must refuse: an address that is no IP, two listeners on one
// VIP:port, a filter it does not know, a listener name of 5 MB, an
// assignment with more endpoints than a service can have. Each is NACKed
// with an error that names the resource and what is wrong with it; the
// agent stays up, writes no map entry, and the service it had keeps
// routing. (The assignment is refused alone: its listener, accepted, waits
// for it and is applied without endpoints once the warming timeout ends.)
// A good response after them is applied.
func TestHostileXDS(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{{"a", "client", "10.244.1.10"}, {"a", "server", "10.244.1.11"}})
	serveName(t, pods["server"], "server")
	srv := startXDSServer(t)
	good := resources(t, goodMesh)
	srv.set(t, snapshotOf("1", good))
	agent := launchAgent(t, bin, nodes["a"], "a", "--xds", srv.addr, "--warming-timeout", "5s")
	logs := agentLogs(agent.daemon)
	dial := func(addr string) probe.Result {
		t.Helper()
		r, err := probe.Dial(pods["client"], addr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	waitFor(t, logs, "the good service never routed", func() bool { r := dial("10.96.0.70:5432"); return r.Result == "ok" && r.Reply == "server" })

	// Each bad listener is a copy of the good one, named and placed anew.
	listener := func(name, addr string) *listenerv3.Listener {
		l := proto.Clone(good.Listeners[0]).(*listenerv3.Listener)
		l.Name = name
		l.Address.GetSocketAddress().Address = addr
		return l
	}
	unknownFilter := listener("rel/odd:5432", "10.96.0.72")
	unknownFilter.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{
		TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/example.NotAFilter"}}
	hugeName := "rel/" + strings.Repeat("x", 5<<20) + ":5432"
	bigCluster := proto.Clone(good.Clusters[0]).(*clusterv3.Cluster)
	bigCluster.Name = "rel/big:5432"
	bigListener := listener("rel/big:5432", "10.96.0.74")
	bigListener.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{
		TypedConfig: mustAny(t, &tcpproxyv3.TcpProxy{StatPrefix: "big", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "rel/big:5432"}})}
	big := &endpointv3.ClusterLoadAssignment{ClusterName: "rel/big:5432", Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	const bigEndpoints = 140000 // MaxBackendsPerService is 131072
	for i := range bigEndpoints {
		big.Endpoints[0].LbEndpoints = append(big.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
				Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address:       fmt.Sprintf("10.%d.%d.%d", 100+i>>16, i>>8&0xff, i&0xff),
					PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 5432},
				}},
			}}},
		})
	}

	cases := []struct {
		name     string
		res      mesh.Resources
		vip      string   // the bad resource's service address, if it has one of its own
		want     []string // in the NACK's error
		capacity bool     // a capacity NACK, not an invalid one
	}{
		{"an address that is no IP", plus(good, []*listenerv3.Listener{listener("rel/badvip:5432", "10.96.0.999")}, nil, nil),
			"", []string{`"rel/badvip:5432"`, "address", "10.96.0.999"}, false},
		{"two listeners on one VIP:port", plus(good, []*listenerv3.Listener{listener("rel/dup:5432", "10.96.0.70")}, nil, nil),
			"", []string{"10.96.0.70:5432"}, false},
		{"a filter Sluice does not know", plus(good, []*listenerv3.Listener{unknownFilter}, nil, nil),
			"10.96.0.72:5432", []string{`"rel/odd:5432"`, "filter_chains[0].filters[0]", "example.NotAFilter"}, false},
		{"a listener name of 5 MB", plus(good, []*listenerv3.Listener{listener(hugeName, "10.96.0.73")}, nil, nil),
			"10.96.0.73:5432", []string{`"rel/xxxx`, fmt.Sprintf("%d bytes", len(hugeName)), "at most 1024"}, false},
		{"an assignment of 140,000 endpoints", plus(good, []*listenerv3.Listener{bigListener}, []*clusterv3.Cluster{bigCluster}, []*endpointv3.ClusterLoadAssignment{big}),
			"10.96.0.74:5432", []string{"rel/big:5432", "140000"}, true},
	}
	start := agent.status(t)
	for i, c := range cases {
		before := agent.status(t)
		srv.set(t, snapshotOf(strconv.Itoa(i+2), c.res))
		var st observe.Status
		waitFor(t, logs, c.name+": never NACKed", func() bool {
			st = agent.status(t)
			return st.XDS.NACKs.Invalid+st.XDS.NACKs.Capacity > before.XDS.NACKs.Invalid+before.XDS.NACKs.Capacity
		})
		nack := st.XDS.LastNACK
		if nack == nil {
			t.Fatalf("%s: NACK counted, but no last NACK in the status", c.name)
		}
		shown := nack.Error
		if len(shown) > 500 {
			shown = shown[:500] + fmt.Sprintf("... (%d bytes)", len(nack.Error))
		}
		t.Logf("%s: %s NACK: %s", c.name, nack.TypeURL, shown)
		for _, w := range c.want {
			if !strings.Contains(nack.Error, w) {
				t.Errorf("%s: the NACK's error does not name %s: %s", c.name, w, shown)
			}
		}
		if got := st.XDS.NACKs.Capacity > before.XDS.NACKs.Capacity; got != c.capacity {
			t.Errorf("%s: counted as a capacity NACK: %v, want %v (nacks %+v, before %+v)", c.name, got, c.capacity, st.XDS.NACKs, before.XDS.NACKs)
		}
		if !agent.running() {
			t.Fatalf("%s: the agent exited:\n%s", c.name, agent.log)
		}
		if st.Services != 1 || st.Dataplane.EntriesWritten != start.Dataplane.EntriesWritten {
			t.Errorf("%s: %d services, %d map entries written; want the good service alone, and %d written", c.name, st.Services,
				st.Dataplane.EntriesWritten, start.Dataplane.EntriesWritten)
		}
		if r := dial("10.96.0.70:5432"); r.Result != "ok" || r.Reply != "server" {
			t.Errorf("%s: the good service after the NACK: %+v", c.name, r)
		}
		if c.vip != "" {
			if r := dial(c.vip); r.Result == "ok" {
				t.Errorf("%s: the refused service %s routes: %+v", c.name, c.vip, r)
			}
		}
	}
	// The last response's listener and cluster were accepted, its
	// assignment refused: as for an assignment that never comes, the
	// listener waits (--warming-timeout), then its service is applied
	// without endpoints and refuses connections at once.
	waitFor(t, logs, "the service whose assignment was refused never refused connections", func() bool {
		return dial("10.96.0.74:5432").Result == "refused"
	})
	if r := dial("10.96.0.70:5432"); r.Result != "ok" || r.Reply != "server" {
		t.Errorf("the good service once the warming ended: %+v", r)
	}

	m := agent.scrape(t)
	if m[`sluice_xds_nacks_total{reason="invalid"}`] < 4 || m[`sluice_xds_nacks_total{reason="capacity"}`] < 1 {
		t.Errorf("metrics count %v invalid and %v capacity NACKs; want at least 4 and 1",
			m[`sluice_xds_nacks_total{reason="invalid"}`], m[`sluice_xds_nacks_total{reason="capacity"}`])
	}

	// A good response again: applied.
	srv.set(t, snapshotOf("100", resources(t, goodMesh+`  - name: later
    namespace: rel
    vips: [10.96.0.76]
    ports: [{port: 5432}]
    endpoints: [{address: 10.244.1.11}]
`)))
	waitFor(t, logs, "the good response after the bad ones was never applied", func() bool {
		r := dial("10.96.0.76:5432")
		return r.Result == "ok" && r.Reply == "server"
	})
	if r := dial("10.96.0.70:5432"); r.Result != "ok" {
		t.Errorf("the first service after the good response: %+v", r)
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// capMesh is a mesh file of services cap0..cap<n-1> at 10.96.0.80 on, each
// served by the pod at 10.244.1.11; cap0 also lists extra endpoints where
// nothing runs.
func capMesh(n, extra int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: cap%d\n    namespace: rel\n    vips: [10.96.0.%d]\n    ports: [{port: 5432}]\n    endpoints: [{address: 10.244.1.11}", i, 80+i)
		if i == 0 {
			for j := range extra {
				fmt.Fprintf(&b, ", {address: 10.244.9.%d}", j+1)
			}
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// TestCapacityExceeded runs an agent with room for 4 services and 8
// backends and gives it more: 6 services, then a service with 9 endpoints.
// Each is NACKed as a capacity problem, with an error naming the capacity,
// and nothing of it is applied: the services in force all still route,
// none of the new ones does, and no map entry is written. A state that
// fits is applied after them.
func TestCapacityExceeded(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)
	nodes, pods := policyCluster(t, []podSpec{{"a", "client", "10.244.1.10"}, {"a", "server", "10.244.1.11"}})
	serveName(t, pods["server"], "server")
	meshFile := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, meshFile, capMesh(3, 0))
	agent := launchAgent(t, bin, nodes["a"], "a", "--mesh", meshFile, "--config-poll", "200ms",
		"--max-services", "4", "--max-backends", "8")
	logs := agentLogs(agent.daemon)
	routes := func(i int) bool {
		r, err := probe.Dial(pods["client"], fmt.Sprintf("10.96.0.%d:5432", 80+i))
		if err != nil {
			t.Fatal(err)
		}
		return r.Result == "ok" && r.Reply == "server"
	}
	for i := range 3 {
		waitFor(t, logs, fmt.Sprintf("cap%d never routed", i), func() bool { return routes(i) })
	}
	start := agent.status(t)

	for _, c := range []struct {
		name     string
		mesh     string
		want     []string // in the NACK's error
		services int      // services of the refused state, of which the first 3 are in force
	}{
		{"6 services", capMesh(6, 0), []string{"state has 6 services, capacity is 4", "raise --max-services"}, 6},
		{"11 backends", capMesh(3, 8), []string{`"rel/cap`, "backend capacity 8 exhausted", "raise --max-backends"}, 3},
	} {
		before := agent.status(t)
		writeFile(t, meshFile, c.mesh)
		var st observe.Status
		waitFor(t, logs, c.name+": never NACKed", func() bool {
			st = agent.status(t)
			return st.XDS.NACKs.Capacity > before.XDS.NACKs.Capacity
		})
		t.Logf("%s: %s NACK: %s", c.name, st.XDS.LastNACK.TypeURL, st.XDS.LastNACK.Error)
		for _, w := range c.want {
			if !strings.Contains(st.XDS.LastNACK.Error, w) {
				t.Errorf("%s: the NACK's error does not say %s: %s", c.name, w, st.XDS.LastNACK.Error)
			}
		}
		m := agent.scrape(t)
		if m[`sluice_xds_nacks_total{reason="capacity"}`] <= float64(before.XDS.NACKs.Capacity) || m[`sluice_xds_nacks_total{reason="invalid"}`] != 0 {
			t.Errorf("%s: metrics count %v capacity and %v invalid NACKs; want more than %d, and 0", c.name,
				m[`sluice_xds_nacks_total{reason="capacity"}`], m[`sluice_xds_nacks_total{reason="invalid"}`], before.XDS.NACKs.Capacity)
		}
		if st.Services != 3 || st.Backends != 3 || st.Dataplane.EntriesWritten != start.Dataplane.EntriesWritten ||
			m[`sluice_map_entries{map="services"}`] != 3 || m[`sluice_map_entries{map="backends"}`] != 3 {
			t.Errorf("%s: %d services, %d backends, %d map entries written (had %d), map entries %v and %v; want 3, 3, none written",
				c.name, st.Services, st.Backends, st.Dataplane.EntriesWritten, start.Dataplane.EntriesWritten,
				m[`sluice_map_entries{map="services"}`], m[`sluice_map_entries{map="backends"}`])
		}
		for i := range c.services {
			if got := routes(i); got != (i < 3) {
				t.Errorf("%s: cap%d routes: %v, want %v", c.name, i, got, i < 3)
			}
		}
		// cap0's extra endpoints would take some of its connections.
		for range 10 {
			if !routes(0) {
				t.Errorf("%s: a connection to cap0 went elsewhere than its endpoint in force", c.name)
				break
			}
		}
	}

	writeFile(t, meshFile, capMesh(4, 0))
	waitFor(t, logs, "a state that fits was never applied", func() bool { return routes(3) })
	if st := agent.status(t); st.Services != 4 || !agent.running() {
		t.Errorf("after a state that fits: %d services, running %v", st.Services, agent.running())
	}
}
