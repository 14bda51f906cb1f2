package demo_test

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluice-mesh/sluice/e2e/cluster"
	"github.com/sluice-mesh/sluice/e2e/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// buildSluice builds the sluice binary into a temporary directory.
func buildSluice(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"curl", "bash"} {
		testenv.Tool(t, tool) // the demo's clients: skips (fails under CI) without them
	}
	bin := filepath.Join(t.TempDir(), "sluice")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sluice-mesh/sluice/cmd/sluice").CombinedOutput(); err != nil {
		t.Fatalf("build sluice: %v\n%s", err, out)
	}
	return bin
}

// The demo binary tells its whole story from examples/mesh.yaml — two
// nodes, load balancing across them, a live edit, a denied call, flows,
// metrics, the datapath without agents — exits 0, and leaves no pin,
// network namespace, link or cgroup of its cluster behind.
func TestDemoRunsAndCleansUp(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)

	const requests = 40
	start := time.Now()
	raw, err := exec.Command(bin, "demo", "--requests", strconv.Itoa(requests), "--mesh", "../../examples/mesh.yaml").CombinedOutput()
	out := string(raw)
	if err != nil {
		t.Fatalf("sluice demo: %v\n%s", err, out)
	}
	t.Logf("the demo took %s", time.Since(start).Round(10*time.Millisecond))

	count := func(t *testing.T, section, pattern string) int {
		t.Helper()
		m := regexp.MustCompile(pattern).FindStringSubmatch(section)
		if m == nil {
			t.Fatalf("demo output lacks %s:\n%s", pattern, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	step := func(t *testing.T, n int) string {
		t.Helper()
		i := strings.Index(out, "\n"+strconv.Itoa(n)+") ")
		if i < 0 {
			t.Fatalf("demo output has no step %d:\n%s", n, out)
		}
		rest := out[i+1:]
		if j := strings.Index(rest, "\n\n"); j >= 0 {
			rest = rest[:j]
		}
		return rest
	}

	t.Run("cluster", func(t *testing.T) {
		s := step(t, 1)
		for _, want := range []string{
			"node-1  frontend   10.244.1.10", "node-1  batch      10.244.1.11", "node-1  backend-a  10.244.1.20",
			"node-2  backend-b  10.244.2.20", "node-2  backend-c  10.244.2.21",
			"both agents ready", "routing and policy in force",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("step 1 lacks %q:\n%s", want, s)
			}
		}
	})
	t.Run("load balancing across both nodes", func(t *testing.T) {
		s := step(t, 2)
		a := count(t, s, `backend-a\s+node-1\s+weight 1\s+(\d+)`)
		b := count(t, s, `backend-b\s+node-2\s+weight 3\s+(\d+)`)
		c := count(t, s, `backend-c\s+node-2\s+unhealthy\s+(\d+)`)
		if a == 0 || b == 0 || c != 0 || a+b != requests {
			t.Errorf("step 2 counts a=%d b=%d c=%d; want a and b above 0, c 0, %d in all:\n%s", a, b, c, requests, s)
		}
		if crossed := count(t, s, `(\d+) of \d+ connections crossed to another node`); crossed != b {
			t.Errorf("%d connections crossed to node-2, but backend-b got %d", crossed, b)
		}
		if !strings.Contains(s, "peer (getpeername) was 10.96.0.10:80 on every one") ||
			!strings.Contains(s, "10.96.0.53:53 (bash /dev/udp) was answered by backend-a") {
			t.Errorf("step 2 lacks the peer address or the UDP answer:\n%s", s)
		}
	})
	t.Run("live edit", func(t *testing.T) {
		s := step(t, 3)
		a := count(t, s, `backend-a\s+node-1\s+weight 1\s+(\d+)`)
		b := count(t, s, `backend-b\s+node-2\s+draining\s+(\d+)`)
		c := count(t, s, `backend-c\s+node-2\s+weight 2\s+(\d+)`)
		if a == 0 || b != 0 || c == 0 || a+c != requests {
			t.Errorf("step 3 counts a=%d b=%d c=%d; want b drained and a, c above 0:\n%s", a, b, c, s)
		}
		if !strings.Contains(s, "after the file was saved") {
			t.Errorf("step 3 does not say when the edit took effect:\n%s", s)
		}
	})
	t.Run("denied call", func(t *testing.T) {
		s := step(t, 4)
		if !strings.Contains(s, "batch    -> 10.96.0.10:80: connect() failed: Operation not permitted") {
			t.Errorf("step 4 lacks batch's EPERM:\n%s", s)
		}
		if n := len(regexp.MustCompile(`frontend -> 10\.96\.0\.10:80: answered by backend-[ac] 10\.244\.\d\.\d+:8080`).FindAllString(s, -1)); n != 2 {
			t.Errorf("step 4 shows %d answers to frontend, want 2:\n%s", n, s)
		}
	})
	t.Run("flows", func(t *testing.T) {
		s := step(t, 5)
		rows := regexp.MustCompile(`(?m)^\s+\d\d:\d\d:\d\d\.\d{3}\s+(\w+)\s+(\S+)\s.*\s(allowed|denied)\s`).FindAllStringSubmatch(s, -1)
		var denies, closes int
		for _, r := range rows {
			switch {
			case r[1] == "deny" && r[2] == "demo/batch" && r[3] == "denied":
				denies++
			case r[1] == "close" && r[2] == "demo/frontend" && r[3] == "allowed":
				closes++
			}
		}
		if !regexp.MustCompile(`TIME\s+EVENT\s+SOURCE\s+SERVICE\s+DESTINATION\s+VERDICT`).MatchString(s) ||
			denies != 1 || closes < 2 || !strings.Contains(s, "only-frontend#default") {
			t.Errorf("step 5: want the table header, batch's deny with its policy and frontend's 2 closes; %d denies, %d closes:\n%s", denies, closes, s)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		s := step(t, 6)
		for _, backend := range []string{"backend-a", "backend-b", "backend-c"} {
			if n := count(t, s, `sluice_tcp_connections_opened_total\{destination_workload="`+backend+`",reporter="source",source_workload="frontend"\} (\d+)`); n == 0 {
				t.Errorf("no connection opened to %s", backend)
			}
		}
		if n := count(t, s, `sluice_tcp_connections_denied_total\{destination_workload="backend-[abc]",reporter="source",source_workload="batch"\} (\d+)`); n == 0 {
			t.Error("no connection of batch denied")
		}
		if n := count(t, s, `sluice_tcp_sent_bytes_total\{destination_workload="backend-b",reporter="source",source_workload="frontend"\} (\d+)`); n == 0 {
			t.Error("no bytes sent to backend-b")
		}
		for _, want := range []string{"sluice_services 2", "sluice_xds_connected 1", "checked: they match the connections the demo made"} {
			if !strings.Contains(s, want) {
				t.Errorf("step 6 lacks %q:\n%s", want, s)
			}
		}
	})
	t.Run("without agents", func(t *testing.T) {
		s := step(t, 7)
		for _, want := range []string{
			"routing goes on with no agent running", "batch is still refused: Operation not permitted",
			"10.96.0.10:80 is no longer routed",
		} {
			if !strings.Contains(s, want) {
				t.Errorf("step 7 lacks %q:\n%s", want, s)
			}
		}
	})
	t.Run("clean-up", func(t *testing.T) {
		id := clusterID(t, out)
		if !strings.Contains(out, "Cleaned up: nothing of cluster "+id+" is left") {
			t.Errorf("the demo does not report its clean-up:\n%s", out)
		}
		if left := leftovers(t, id); left != "" {
			t.Errorf("demo left objects of its cluster %s behind: %s", id, left)
		}
	})
}

// Interrupted (Ctrl-C reaches the demo and every process of its group) once
// the agents run, the demo stops, says so, and still removes everything.
func TestDemoInterruptedCleansUp(t *testing.T) {
	testenv.RequirePrivileged(t)
	bin := buildSluice(t)

	cmd := exec.Command(bin, "demo", "--mesh", "../../examples/mesh.yaml")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a process group, as a terminal's job
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	r := bufio.NewReader(io.TeeReader(stdout, &out))
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			_ = cmd.Wait()
			t.Fatalf("the demo ended before its agents started: %v\n%s%s", err, out.String(), stderr.String())
		}
		if strings.Contains(line, "agents: `sluice agent") {
			break
		}
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, r)
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); err == nil || code != 1 {
		t.Errorf("interrupted demo: exit code %d (%v), want 1", code, err)
	}
	if !strings.Contains(stderr.String(), "interrupted") {
		t.Errorf("the demo does not say it was interrupted: %q", stderr.String())
	}
	id := clusterID(t, out.String())
	if !strings.Contains(out.String(), "Cleaned up: nothing of cluster "+id+" is left") {
		t.Errorf("the interrupted demo does not report its clean-up:\n%s", out.String())
	}
	if left := leftovers(t, id); left != "" {
		t.Errorf("interrupted demo left objects of its cluster %s behind: %s", id, left)
	}
}

func clusterID(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`The cluster ([0-9a-f]+),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("demo output names no simulated cluster:\n%s", out)
	}
	return m[1]
}

// leftovers lists the objects of the simulated cluster id that exist now.
// Other packages' tests make clusters of their own alongside: only this
// id's are looked at.
func leftovers(t *testing.T, id string) string {
	t.Helper()
	found, err := cluster.Leftovers(id)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(found, " ")
}
