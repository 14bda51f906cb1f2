package cluster

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MetricSum adds up the samples of the metric name in a Prometheus text
// page whose labels include every label given, as name=value pairs. It
// returns an error if no sample of the metric has those labels.
func MetricSum(page, name string, labels ...string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, errors.New("metric labels must come as name, value pairs")
	}
	var sum float64
	found := false
	for _, line := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		match := true
		for i := 0; i < len(labels); i += 2 {
			pair := labels[i] + "=" + strconv.Quote(labels[i+1])
			if !strings.Contains(rest, "{"+pair) && !strings.Contains(rest, ","+pair) {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(rest[strings.LastIndexByte(rest, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %w", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("no sample of %s with labels %v", name, labels)
	}
	return sum, nil
}
