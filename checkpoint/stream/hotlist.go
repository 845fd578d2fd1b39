package stream

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/podsnapshot/podsnapshot/storage"
)

// A hot-frame list is stored next to a snapshot's files (manifest.HotFramesFile) as one
// JSON object:
//
//	{"sha256":"<64 hex digits>","list":{"version":1,"pages":"pages.img.zst",
//	  "frameSize":4194304,"frames":512,"xxh64":"<16 hex digits>","hot":[37,205,206]}}
//
// "list" says which pages file it is about (the object's base name, its frame size and
// count and the XXH64 of its raw bytes, all as the manifest records them) and "hot" the
// frame indexes in the order the sandbox first demanded them; "sha256" is the SHA-256 of
// the bytes of "list" exactly as stored (no re-encoding: the checksum is over what was
// written). A list that fails any check is ignored: a restore then fetches the pages in
// order, as without a list.
type hotList struct {
	Version   int    `json:"version"`
	Pages     string `json:"pages"`
	FrameSize int64  `json:"frameSize"`
	Frames    int    `json:"frames"`
	XXH64     string `json:"xxh64"`
	Hot       []int  `json:"hot"`
}

// hotObject is the stored object: the list and its checksum.
type hotObject struct {
	SHA256 string          `json:"sha256"`
	List   json.RawMessage `json:"list"`
}

const (
	// hotListVersion is the format version EncodeHotList writes and DecodeHotList reads.
	hotListVersion = 1
	// MaxHotFrames bounds a list: 4096 frames, 16 GiB of pages in frames of 4 MiB, far
	// more than a workload touches before it is ready; a recorder stops adding there.
	MaxHotFrames = 4096
	// MaxHotListBytes bounds the object a restore reads: MaxHotFrames indexes of up to 7
	// characters each, the header and room to spare.
	MaxHotListBytes = 64 << 10
)

// ErrBadHotList is wrapped by DecodeHotList's errors: the stored list is not one this
// snapshot's restore can use.
var ErrBadHotList = errors.New("unusable hot-frame list")

// EncodeHotList returns the stored form of hot, frame indexes of x's file in first-demand
// order (1..MaxHotFrames of them, each in [0, x.Len()), no duplicates). Errors: a list
// that breaks those rules (wrapping ErrBadHotList).
func EncodeHotList(x *storage.FrameIndex, hot []int) ([]byte, error) {
	l := identity(x)
	l.Hot = hot
	if err := l.check(x); err != nil {
		return nil, err
	}
	body, err := json.Marshal(l)
	if err != nil {
		return nil, fmt.Errorf("encode hot-frame list: %w", err)
	}
	sum := sha256.Sum256(body)
	return json.Marshal(hotObject{SHA256: hex.EncodeToString(sum[:]), List: body})
}

// DecodeHotList verifies data, a stored hot-frame list (at most MaxHotListBytes), against
// x, the frame index of the snapshot's pages file, and returns its frame indexes in
// order. Errors wrap ErrBadHotList and say what is wrong: not JSON, a checksum mismatch,
// another version, a list of another pages file (name, frame size, frame count or
// XXH64), no frames or more than MaxHotFrames, an index out of range, a duplicate.
func DecodeHotList(data []byte, x *storage.FrameIndex) ([]int, error) {
	if len(data) > MaxHotListBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBadHotList, len(data), MaxHotListBytes)
	}
	var obj hotObject
	if err := json.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHotList, err)
	}
	sum := sha256.Sum256(obj.List)
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, obj.SHA256) {
		return nil, fmt.Errorf("%w: sha256 mismatch: the list hashes to %s, the object says %q", ErrBadHotList, got, obj.SHA256)
	}
	var l hotList
	dec := json.NewDecoder(strings.NewReader(string(obj.List)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadHotList, err)
	}
	if l.Version != hotListVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadHotList, l.Version, hotListVersion)
	}
	want := identity(x)
	if l.Pages != want.Pages || l.FrameSize != want.FrameSize || l.Frames != want.Frames || l.XXH64 != want.XXH64 {
		return nil, fmt.Errorf("%w: it is about %s (%d frames of %d bytes, xxh64 %s), not %s (%d frames of %d bytes, xxh64 %s)",
			ErrBadHotList, l.Pages, l.Frames, l.FrameSize, l.XXH64, want.Pages, want.Frames, want.FrameSize, want.XXH64)
	}
	if err := l.check(x); err != nil {
		return nil, err
	}
	return l.Hot, nil
}

// identity is the header of x's list: which pages file, in which frames.
func identity(x *storage.FrameIndex) hotList {
	info := x.Info()
	return hotList{Version: hotListVersion, Pages: path.Base(info.Name), FrameSize: info.FrameSize,
		Frames: x.Len(), XXH64: info.XXH64}
}

// check verifies l.Hot against x: 1..MaxHotFrames indexes in range, no duplicates.
func (l hotList) check(x *storage.FrameIndex) error {
	if len(l.Hot) == 0 || len(l.Hot) > MaxHotFrames {
		return fmt.Errorf("%w: %d frames, want 1..%d", ErrBadHotList, len(l.Hot), MaxHotFrames)
	}
	seen := make(map[int]bool, len(l.Hot))
	for _, i := range l.Hot {
		if i < 0 || i >= x.Len() {
			return fmt.Errorf("%w: frame %d outside 0..%d", ErrBadHotList, i, x.Len()-1)
		}
		if seen[i] {
			return fmt.Errorf("%w: frame %d listed twice", ErrBadHotList, i)
		}
		seen[i] = true
	}
	return nil
}
