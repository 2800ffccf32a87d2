// Package alerts evaluates the chart's alerting rules (charts/thinpool-csi/files/alerts.yaml) with
// Prometheus's own rule engine on metrics the real plugin and controller served: each situation
// raises exactly the alerts it should, after their `for` durations, and no others; and a spike
// shorter than a rule's `for` raises nothing.
//
// Where the scrapes come from, each taken while the plugin or controller really was in that state:
//   - the VM suite, in $THINPOOL_SCRAPES (default target/vm/runs/kernel-suite/metrics): `healthy`,
//     `full-data` (a pool out of data space), `grow-blocked` (a self-growing pool at its maximum),
//     `metadata-near-full` and `metadata-full` (a pool whose metadata fills up), `needs-check` (a
//     pool whose metadata carries the kernel's needs_check flag);
//   - the control-plane tier (e2e/tests/apiserver), in $THINPOOL_CONTROLLER_SCRAPES (default
//     target/apiserver/metrics): `controller-healthy` and `controller-stale` (a ThinPool whose node
//     stopped reporting, marked Stale by the controller);
//   - the cluster suite in the VM (e2e/cluster/run.sh; too long for CI, so its scrape is kept in
//     git, with the date of the run in its first line): `scrapes/orphaned-missing.prom`, the node
//     plugin with a volume whose PersistentVolume was deleted and a PersistentVolume naming a
//     volume the node does not have.
//
// Each scrape is labelled with `node` as the chart's PodMonitor does. A series a scrape does not
// hold at some moment gets a staleness marker then, as Prometheus writes one for a series that
// leaves a target's scrape.
package alerts

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/util/teststorage"
)

const (
	node     = "vm-node"
	step     = 30 * time.Second
	duration = 2 * time.Hour
)

// Where scrapes are kept, and what writes them.
type source struct {
	dir  func() string
	made string
}

// A scrape: its source and its file name without `.prom`.
type scrape struct {
	from source
	name string
}

func (s scrape) path() string { return filepath.Join(s.from.dir(), s.name+".prom") }

// dir: $name when set, else `fallback`.
func dir(name, fallback string) func() string {
	return func() string {
		if d := os.Getenv(name); d != "" {
			return d
		}
		return fallback
	}
}

var (
	vmSuite = source{
		dir("THINPOOL_SCRAPES", filepath.Join("..", "..", "target", "vm", "runs", "kernel-suite", "metrics")),
		"run the VM suite first (cargo run -p thinpool-e2e -- vm), it writes the scrapes",
	}
	apiserver = source{
		dir("THINPOOL_CONTROLLER_SCRAPES", filepath.Join("..", "..", "target", "apiserver", "metrics")),
		"run the control-plane tier first (cargo test -p thinpool-e2e --test apiserver), it writes the scrapes",
	}
	clusterRun = source{
		func() string { return "scrapes" },
		"the cluster suite's scrapes are kept in git; e2e/run.sh cluster writes them anew",
	}
)

// What each situation, held for two hours, must raise; every other alert of the chart must stay quiet.
var cases = []struct {
	scrape scrape
	want   []string
}{
	{scrape{vmSuite, "healthy"}, nil},
	{scrape{vmSuite, "full-data"}, []string{"ThinPoolDataFillCritical", "ThinPoolDataFillHigh", "ThinPoolReadOnly"}},
	{scrape{vmSuite, "grow-blocked"}, []string{"ThinPoolAutoExtendBlocked", "ThinPoolDataFillCritical", "ThinPoolDataFillHigh", "ThinPoolReadOnly"}},
	// Above the metadata fill limit (80 %), snapshots refused: the warning only.
	{scrape{vmSuite, "metadata-near-full"}, []string{"ThinPoolMetadataFillHigh"}},
	// Out of metadata: the pool is read-only.
	{scrape{vmSuite, "metadata-full"}, []string{"ThinPoolMetadataFillCritical", "ThinPoolMetadataFillHigh", "ThinPoolReadOnly"}},
	// The kernel keeps a pool that needs a check read-only; the plugin reports the mode as
	// needs_check, which says what to do, and ThinPoolReadOnly does not repeat it.
	{scrape{vmSuite, "needs-check"}, []string{"ThinPoolNeedsCheck"}},
	{scrape{apiserver, "controller-healthy"}, nil},
	{scrape{apiserver, "controller-stale"}, []string{"ThinPoolStale"}},
	{scrape{clusterRun, "orphaned-missing"}, []string{"ThinPoolMissingVolumes", "ThinPoolOrphanedVolumes"}},
}

// One scrape's samples: series -> value.
type samples map[string]struct {
	labels labels.Labels
	value  float64
}

func read(t *testing.T, s scrape) samples {
	f, err := os.Open(s.path())
	if err != nil {
		t.Fatalf("%v: %s", err, s.from.made)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("%s: %v", s.path(), err)
	}
	out := samples{}
	for name, fam := range families {
		for _, m := range fam.GetMetric() {
			var v float64
			switch {
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				v = m.GetUntyped().GetValue()
			default:
				continue // histograms: no alert reads them
			}
			b := labels.NewBuilder(labels.EmptyLabels())
			b.Set(labels.MetricName, name)
			b.Set("node", node)
			for _, l := range m.GetLabel() {
				b.Set(l.GetName(), l.GetValue())
			}
			ls := b.Labels()
			out[ls.String()] = struct {
				labels labels.Labels
				value  float64
			}{ls, v}
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no gauge or counter", s.path())
	}
	return out
}

// A timeline: which scrape the target serves from each moment on, until the next phase.
type phase struct {
	from   time.Duration
	serves samples
}

// load writes a timeline into storage, one scrape every `step` from 0 to `duration`.
func load(t *testing.T, timeline []phase) *teststorage.TestStorage {
	all := map[string]labels.Labels{}
	for _, ph := range timeline {
		for k, s := range ph.serves {
			all[k] = s.labels
		}
	}
	st := teststorage.New(t)
	app := st.Appender(context.Background())
	for ts := time.Duration(0); ts <= duration; ts += step {
		current := timeline[0].serves
		for _, ph := range timeline {
			if ts >= ph.from {
				current = ph.serves
			}
		}
		for k, ls := range all {
			v := math.Float64frombits(value.StaleNaN)
			if s, ok := current[k]; ok {
				v = s.value
			}
			if _, err := app.Append(0, ls, ts.Milliseconds(), v); err != nil {
				t.Fatalf("appending %s: %v", ls, err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	return st
}

// alertRules reads the chart's alerting rules.
func alertRules(t *testing.T, p parser.Parser) []*rules.AlertingRule {
	content, err := os.ReadFile(filepath.Join("..", "..", "charts", "thinpool-csi", "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, p, nil)
	if len(errs) > 0 {
		t.Fatalf("alerts.yaml: %v", errs)
	}
	var out []*rules.AlertingRule
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			expr, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			out = append(out, rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
				labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", false, nil))
		}
	}
	if len(out) == 0 {
		t.Fatal("alerts.yaml holds no alerting rule")
	}
	return out
}

// fired evaluates every rule every `step` over the timeline and returns the alerts that reached
// the firing state at some moment, sorted.
func fired(t *testing.T, timeline []phase) []string {
	p := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	query := rules.EngineQueryFunc(engine, load(t, timeline))
	var firing []string
	for _, r := range alertRules(t, p) {
		seen := false
		for ts := time.Duration(0); ts <= duration; ts += step {
			if _, err := r.Eval(context.Background(), 0, time.UnixMilli(ts.Milliseconds()), query, nil, 0); err != nil {
				t.Fatalf("%s at %v: %v", r.Name(), ts, err)
			}
			for _, a := range r.ActiveAlerts() {
				seen = seen || a.State == rules.StateFiring
			}
		}
		if seen {
			firing = append(firing, r.Name())
		}
	}
	slices.Sort(firing)
	return firing
}

func TestChartAlertsOnScrapedMetrics(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	names := map[string]bool{}
	for _, r := range alertRules(t, p) {
		names[r.Name()] = true
	}
	raised := map[string]bool{}
	for _, c := range cases {
		for _, a := range c.want {
			if !names[a] {
				t.Fatalf("case %s expects %s, which alerts.yaml does not define", c.scrape.name, a)
			}
			raised[a] = true
		}
	}
	// Every alert of the chart is shown firing on some real situation.
	for name := range names {
		if !raised[name] {
			t.Errorf("no case raises %s: add a scrape of a plugin or controller in that situation", name)
		}
	}
	for _, c := range cases {
		t.Run(c.scrape.name, func(t *testing.T) {
			// The cluster suite's scrape is kept in git once a cluster run has written it; until
			// then its alerts are shown by no scrape, and the run says so.
			if _, err := os.Stat(c.scrape.path()); err != nil && c.scrape.from.dir() == clusterRun.dir() {
				t.Skipf("%s: not kept yet (%s): %v, %v not yet shown firing", c.scrape.name, c.scrape.from.made, err, c.want)
			}
			got := fired(t, []phase{{0, read(t, c.scrape)}})
			want := slices.Clone(c.want)
			slices.Sort(want)
			t.Logf("%s: firing %v", c.scrape.name, got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: firing %v, expected %v", c.scrape.name, got, want)
			}
		})
	}
}

// A pool out of data space for a short while (healthy before and after): alerts with a `for`
// longer than the spike stay quiet; held longer, the same spike raises the short ones only.
func TestShortSpikeFiresNothing(t *testing.T) {
	healthy := read(t, scrape{vmSuite, "healthy"})
	full := read(t, scrape{vmSuite, "full-data"})
	at := 30 * time.Minute
	for _, c := range []struct {
		spike time.Duration
		want  []string
	}{
		// Two scrapes (one minute) out of space: ThinPoolReadOnly's `for: 1m` is not yet over.
		{time.Minute, nil},
		// Four minutes: past the 1 and 2 minute rules, well short of the 15 minute warning.
		{4 * time.Minute, []string{"ThinPoolDataFillCritical", "ThinPoolReadOnly"}},
	} {
		t.Run(fmt.Sprintf("spike of %v", c.spike), func(t *testing.T) {
			got := fired(t, []phase{{0, healthy}, {at, full}, {at + c.spike, healthy}})
			t.Logf("full for %v: firing %v", c.spike, got)
			if !slices.Equal(got, c.want) {
				t.Errorf("full for %v: firing %v, expected %v", c.spike, got, c.want)
			}
		})
	}
}
