package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Line is one line of a followed file and the moment it was first seen there.
type Line struct {
	Text string
	Seen time.Time
}

// tailPoll is how often a Tail looks for new lines: it bounds the error of every
// "seen from outside" timing, so it is kept small; reading an unchanged file is cheap.
const tailPoll = 5 * time.Millisecond

// Tail follows a growing text file (a task's output, containerd's log) from its start
// and timestamps each line when it appears. It polls in the background, so arrival times
// stay accurate while the caller waits for something else.
type Tail struct {
	path string

	mu      sync.Mutex
	lines   []Line
	partial []byte        // an unterminated last line, completed by a later read
	changed chan struct{} // closed and replaced whenever lines are added
	err     error         // a read error other than "not there yet"

	stop chan struct{}
	done chan struct{}
}

// Follow starts following path; the file need not exist yet. Call Close when done.
func Follow(path string) *Tail {
	t := &Tail{path: path, changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go t.loop()
	return t
}

func (t *Tail) loop() {
	defer close(t.done)
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 64<<10)
	tick := time.NewTicker(tailPoll)
	defer tick.Stop()
	for {
		if f == nil {
			var err error
			if f, err = os.Open(t.path); err != nil && !os.IsNotExist(err) {
				t.setErr(fmt.Errorf("follow %s: %w", t.path, err))
				return
			}
		}
		if f != nil {
			for {
				n, err := f.Read(buf)
				if n > 0 {
					t.add(buf[:n], time.Now())
				}
				if err == io.EOF || n == 0 {
					break
				}
				if err != nil {
					t.setErr(fmt.Errorf("read %s: %w", t.path, err))
					return
				}
			}
		}
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
	}
}

func (t *Tail) add(b []byte, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	data := append(t.partial, b...)
	added := false
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		t.lines = append(t.lines, Line{Text: strings.TrimRight(string(data[:i]), "\r"), Seen: now})
		data = data[i+1:]
		added = true
	}
	t.partial = append([]byte(nil), data...)
	if added {
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

func (t *Tail) setErr(err error) {
	t.mu.Lock()
	t.err = err
	close(t.changed)
	t.changed = make(chan struct{})
	t.mu.Unlock()
}

// Close stops following the file.
func (t *Tail) Close() {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
}

// Lines returns the complete lines seen so far.
func (t *Tail) Lines() []Line {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]Line(nil), t.lines...)
}

// Text returns the complete lines seen so far, joined by newlines.
func (t *Tail) Text() string {
	var b strings.Builder
	for _, l := range t.Lines() {
		b.WriteString(l.Text)
		b.WriteByte('\n')
	}
	return b.String()
}

// Wait waits until a line satisfies match and returns the first such line. It fails when
// ctx ends or after timeout, saying what it waited for (what).
func (t *Tail) Wait(ctx context.Context, timeout time.Duration, what string, match func(string) bool) (Line, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	next := 0
	for {
		t.mu.Lock()
		lines, changed, err := t.lines[next:], t.changed, t.err
		next = len(t.lines)
		t.mu.Unlock()
		for _, l := range lines {
			if match(l.Text) {
				return l, nil
			}
		}
		if err != nil {
			return Line{}, err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Line{}, fmt.Errorf("waiting for %s in %s: %w", what, t.path, context.Cause(ctx))
		case <-deadline.C:
			return Line{}, fmt.Errorf("no %s in %s after %v", what, t.path, timeout)
		}
	}
}

// WaitContains waits for a line containing s.
func (t *Tail) WaitContains(ctx context.Context, timeout time.Duration, s string) (Line, error) {
	return t.Wait(ctx, timeout, strconv.Quote(s), func(l string) bool { return strings.Contains(l, s) })
}

// LogEntry is a logrus text-format line, as containerd and the shim write them:
// time="..." level=info msg="..." key=value key="quoted value".
type LogEntry struct {
	Time   time.Time // zero when the line has no parseable time field
	Level  string
	Msg    string
	Fields map[string]string // every key, time, level and msg included
}

// ParseLogEntry parses a logrus text-format line. Values may be bare (up to the next
// space) or double-quoted with Go escapes; anything unparseable ends the parse, keeping
// the fields read so far.
func ParseLogEntry(line string) LogEntry {
	e := LogEntry{Fields: map[string]string{}}
	s := line
	for {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq <= 0 || strings.ContainsAny(s[:eq], " \"") {
			break
		}
		key, rest := s[:eq], s[eq+1:]
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := closingQuote(rest)
			if end < 0 {
				break
			}
			v, err := strconv.Unquote(rest[:end+1])
			if err != nil {
				break
			}
			val, s = v, rest[end+1:]
		} else {
			sp := strings.IndexByte(rest, ' ')
			if sp < 0 {
				sp = len(rest)
			}
			val, s = rest[:sp], rest[sp:]
		}
		e.Fields[key] = val
	}
	e.Level, e.Msg = e.Fields["level"], e.Fields["msg"]
	if ts, ok := e.Fields["time"]; ok {
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			e.Time = t
		}
	}
	return e
}

// closingQuote returns the index of the quote that closes the string starting at s[0],
// skipping escaped characters, or -1.
func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// Int returns field key as an integer, or -1 when it is missing or not a number.
func (e LogEntry) Int(key string) int64 {
	v, err := strconv.ParseInt(e.Fields[key], 10, 64)
	if err != nil {
		return -1
	}
	return v
}
