// Streams and events on the software GPU, as the CUDA programming guide lets them behave, and the
// cross-stream race check.
//
// Every stream is a queue of work: kernel launches, memsets, copies, cuBLASLt matmuls, graph
// launches, and markers for cuEventRecord and cuStreamWaitEvent. Work runs in its stream's order,
// after whatever it waits for on other streams, and otherwise whenever the schedule says:
//
// - The legacy default stream (a null handle, CU_STREAM_LEGACY, and here also
//   CU_STREAM_PER_THREAD) synchronises with every blocking stream, as CUDA's legacy stream does:
//   its work waits for what the blocking streams hold, theirs waits for its. Its work runs at once
//   (after what it waits for), so a single-stream program, the engine, keeps its host order and
//   sees a failed launch at the launch. Streams created with CU_STREAM_NON_BLOCKING (cudarc's
//   new_stream) do not synchronise with it.
// - Work on a created stream is queued. Under schedule seed 0 it runs at once, in host order.
//   Under another seed (PREFER_EMU_SEED, prefer_emu_set_schedule) the heads of the queues that may
//   run are drawn at random: some right after a submission, the rest at the next point where the
//   host waits (cuStreamSynchronize, cuEventSynchronize, cuCtxSynchronize, a copy into host
//   memory, a synchronous memset or copy on the legacy stream, cuMemFree, cuStreamDestroy), and
//   then in an interleaving drawn from the seed. A missing cuStreamWaitEvent shows as a changed
//   result from seed to seed.
// - Host memory is pageable (there is no cuMemHostAlloc here), with CUDA's rules for it: an
//   asynchronous copy from the host takes the host bytes when it is called (CUDA stages them); a
//   copy into the host, asynchronous or not, returns once it has run.
// - An error of work that ran later than its submission (a fault, a race) is returned by the next
//   call that submits or waits, as CUDA returns asynchronous errors; once returned it is cleared.
//
// The race check (PREFER_EMU_RACE_CHECK, on by default) orders work by vector clocks, one entry per
// stream: a stream's clock ticks with each piece of work; cuEventRecord captures the stream's
// clock, cuStreamWaitEvent joins the event's into the waiting stream's; the host's clock joins a
// stream's when it waits for it (stream, event and context synchronisation, a successful
// cuEventQuery or cuStreamQuery, a copy into host memory), and every later submission joins the
// host's. Two pieces of work on different streams that touch overlapping bytes of one allocation,
// at least one writing, with neither's clock covering the other, fail the later to run with both
// named and the buffer described.
//
// What a piece of work touches: copies, memsets and matmuls their exact byte ranges; a kernel the
// lowest and highest byte it read and wrote in each allocation one of its parameters points into,
// seen by the thread-sanitizer instrumentation of its loads, stores and atomics while it runs (an
// allocation reached only through a pointer stored in device memory is not seen). Kernels follow
// their accesses only once work on two streams may run unordered (work goes on a stream while
// another holds work the host has not waited for, or a stream is destroyed holding such work):
// until then every piece of work is ordered after all work of other streams, and following every
// load and store would cost a single-stream program (a single-GPU run) a tenth to a quarter of
// its time for nothing. A kernel that ran before then is remembered as having written every byte
// of the buffers its parameters point into, so later work of another stream that is not ordered
// after it and touches one of them is still reported (more than the exact check would: the report
// says so). Per allocation the check keeps the accesses not yet covered by a later access ordered
// after them (at most kMaxRecords; the oldest go first); freeing the allocation forgets them.
// Frees are not checked against work still using the buffer: cuMemFree runs every queue dry first.
#include "runtime.h"

#include <chrono>
#include <deque>
#include <map>
#include <set>

namespace emu {

namespace {

constexpr int kNotReady = 600;  // CUDA_ERROR_NOT_READY
constexpr size_t kMaxRecords = 256;

// A vector clock, one entry per stream id (0: the legacy stream).
using Clock = std::vector<uint64_t>;

void join(Clock& into, const Clock& from) {
    if (from.size() > into.size()) into.resize(from.size(), 0);
    for (size_t i = 0; i < from.size(); ++i) into[i] = std::max(into[i], from[i]);
}
uint64_t entry(const Clock& c, size_t i) { return i < c.size() ? c[i] : 0; }

struct Work {
    uint64_t seq;  // submission order, for seed 0
    int stream;
    std::shared_ptr<const std::string> label;
    std::vector<DeviceAccess> accesses;
    std::function<int()> run;
    std::vector<std::shared_ptr<Work>> after;  // work on other streams it waits for
    Clock clock;
    bool done = false;
};
using WorkPtr = std::shared_ptr<Work>;

struct Stream {
    int id;
    bool legacy, blocking;
    std::deque<WorkPtr> queue;  // submitted, not yet run, in stream order
    WorkPtr last;               // the latest submitted
    Clock clock;
};

// One access in an allocation's history: which work, on which stream, at which tick of it.
struct Record {
    std::shared_ptr<const std::string> label;
    int stream;
    uint64_t tick;
    uintptr_t lo, hi;
    bool write;
    bool whole;  // DeviceAccess::whole
};

struct Scheduler {
    std::recursive_mutex lock;
    std::vector<Stream*> streams;  // [0]: the legacy stream
    std::set<void*> handles;       // created streams
    int next_id = 1;
    uint64_t next_seq = 0;
    Clock host;  // what the host has waited for
    uint64_t rng = 0, rng_seed = ~0ull;
    int pending_code = 0;
    std::string pending_message;
    // Work on two streams could run unordered: kernels follow what they touch (never turned off).
    std::atomic<bool> watching{false};
    std::map<uintptr_t, std::vector<Record>> history;  // by allocation base
};

Scheduler& sched() {
    static Scheduler& s = *[] {
        Scheduler* s = new Scheduler();  // never destroyed: work may be queued at exit
        s->streams.push_back(new Stream{0, true, true, {}, nullptr, {}});
        return s;
    }();
    return s;
}

thread_local Work* running = nullptr;

uint64_t draw(Scheduler& s) {
    const uint64_t seed = current_seed();
    if (seed != s.rng_seed) {
        s.rng_seed = seed;
        s.rng = seed * 0x9e3779b97f4a7c15ull ^ 0x5851f42d4c957f2dull;
    }
    uint64_t z = (s.rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

Stream* resolve(Scheduler& s, void* handle) {
    const uintptr_t h = (uintptr_t)handle;
    if (h == 0 || h == 1 || h == 2) return s.streams[0];
    return s.handles.count(handle) ? (Stream*)handle : nullptr;
}

// The stream a handle names, or nullptr after recording "<api>: <handle> is not a live stream".
Stream* live_stream(Scheduler& s, void* handle, const char* api) {
    Stream* st = resolve(s, handle);
    if (!st) set_error(kInvalidHandle, format("%s: %p is not a live stream", api, handle));
    return st;
}

std::string stream_name(int id) {
    return id == 0 ? std::string("the legacy default stream") : format("stream %d", id);
}

// ---- the race check ---------------------------------------------------------------------------
bool covers(const Record& r, const DeviceAccess& a) { return a.lo <= r.lo && r.hi <= a.hi; }

int check_races(Scheduler& s, const Work& w) {
    for (const DeviceAccess& a : w.accesses) {
        uintptr_t base;
        size_t size;
        if (a.lo >= a.hi || !find_allocation(a.lo, &base, &size)) continue;
        auto it = s.history.find(base);
        if (it == s.history.end()) continue;
        for (const Record& r : it->second) {
            if (r.stream == w.stream || !(r.write || a.write) || r.hi <= a.lo || a.hi <= r.lo) continue;
            if (entry(w.clock, r.stream) >= r.tick) continue;  // ordered after it
            const uintptr_t lo = std::max(r.lo, a.lo);
            const char* whole = r.whole ? " (its exact bytes were not followed: it ran while one stream alone had work, "
                                          "so every byte of the buffer counts as written)"
                                        : "";
            set_error(kLaunchFailed,
                      format("cross-stream race on the %zu-byte device buffer at 0x%zx (%s): %s on %s %s bytes "
                             "[%zu, %zu) of it%s, and %s on %s %s bytes [%zu, %zu), with nothing ordering the two (no "
                             "cuEventRecord + cuStreamWaitEvent and no host synchronisation between them)",
                             size, (size_t)base, describe_address(lo).c_str(), r.label->c_str(),
                             stream_name(r.stream).c_str(), r.write ? "wrote" : "read", (size_t)(r.lo - base),
                             (size_t)(r.hi - base), whole, w.label->c_str(), stream_name(w.stream).c_str(),
                             a.write ? "writes" : "reads", (size_t)(a.lo - base), (size_t)(a.hi - base)));
            return kLaunchFailed;
        }
    }
    return 0;
}

// Adds the work's accesses to the history, dropping records they cover and are ordered after
// (any later work unordered with those is unordered with this one too, and conflicts with it
// whenever it would have with them).
void remember(Scheduler& s, const Work& w) {
    const uint64_t tick = entry(w.clock, (size_t)w.stream);
    for (const DeviceAccess& a : w.accesses) {
        uintptr_t base;
        size_t size;
        if (a.lo >= a.hi || !find_allocation(a.lo, &base, &size)) continue;
        auto& recs = s.history[base];
        recs.erase(std::remove_if(recs.begin(), recs.end(),
                                  [&](const Record& r) {
                                      return covers(r, a) && (a.write || !r.write) &&
                                             entry(w.clock, r.stream) >= r.tick;
                                  }),
                   recs.end());
        if (recs.size() >= kMaxRecords) recs.erase(recs.begin());
        recs.push_back(Record{w.label, w.stream, tick, a.lo, a.hi, a.write, a.whole});
    }
}

// ---- running work -----------------------------------------------------------------------------
bool ready(const Stream& st) {
    if (st.queue.empty()) return false;
    for (const WorkPtr& d : st.queue.front()->after)
        if (!d->done) return false;
    return true;
}

void run_head(Scheduler& s, Stream& st) {
    WorkPtr w = st.queue.front();
    st.queue.pop_front();
    Work* outer = running;
    running = w.get();
    int rc = w->run();
    running = outer;
    w->done = true;
    w->run = nullptr;  // the parameter copies and host snapshots go now
    if (rc == 0 && race_check_enabled.load()) {
        // Until work on two streams may run unordered, nothing can race across streams; the
        // history is still kept, for the work that comes after.
        if (s.watching) rc = check_races(s, *w);
        remember(s, *w);
    }
    w->accesses.clear();
    w->accesses.shrink_to_fit();
    w->after.clear();  // done: nothing need be kept alive for it
    if (rc && !s.pending_code) {
        s.pending_code = rc;
        s.pending_message = last_error_message();
    }
}

// Runs one queue head that may run: the oldest under seed 0, else one drawn from the seed.
bool step(Scheduler& s) {
    Stream* pick = nullptr;
    size_t count = 0;
    const bool random = current_seed() != 0;
    for (Stream* st : s.streams) {
        if (!ready(*st)) continue;
        ++count;
        if (random) {
            if (draw(s) % count == 0) pick = st;  // reservoir: uniform over the ready heads
        } else if (!pick || st->queue.front()->seq < pick->queue.front()->seq) {
            pick = st;
        }
    }
    if (!pick) return false;
    run_head(s, *pick);
    return true;
}

template <typename Pred>
void run_until(Scheduler& s, Pred done) {
    while (!done())
        if (!step(s)) {
            // Every wait is on earlier work, so something can always run: this is a bug here.
            fprintf(stderr, "prefer software GPU: stream work waits in a cycle\n");
            abort();
        }
}

// Whether `st`'s work so far may still be unordered with later work of other streams: the host has
// not waited for all of it.
bool unsettled(const Scheduler& s, const Stream& st) { return entry(st.clock, st.id) > entry(s.host, st.id); }

// Work is about to go on `st`: when another stream holds work the host has not waited for, the two
// may run unordered, and from now on kernels follow their accesses. Until then every piece of
// work was ordered after all work of other streams (its clock joins the host's).
void note_concurrency(Scheduler& s, const Stream* st) {
    if (s.watching.load(std::memory_order_relaxed)) return;
    for (const Stream* other : s.streams)
        if (other != st && unsettled(s, *other)) {
            s.watching = true;
            return;
        }
}

// After a submission under a nonzero seed: a few heads now, drawn from the seed, the rest later.
void progress_a_little(Scheduler& s) {
    if (current_seed() == 0) return;
    while (draw(s) % 2 == 0)
        if (!step(s)) return;
}

int take_pending(Scheduler& s) {
    if (!s.pending_code) return 0;
    const int code = s.pending_code;
    set_error(code, s.pending_message);
    s.pending_code = 0;
    s.pending_message.clear();
    return code;
}

// Orders and queues `w` on `st`: after the stream's earlier work, `extra` (a waited event's
// marker) and, between the legacy stream and blocking streams, each other's earlier work.
WorkPtr enqueue(Scheduler& s, Stream& st, WorkPtr w, const WorkPtr& extra, const Clock* extra_clock) {
    w->seq = s.next_seq++;
    w->stream = st.id;
    if (extra && !extra->done) w->after.push_back(extra);
    if (extra_clock) join(st.clock, *extra_clock);
    for (Stream* other : s.streams) {
        if (other == &st || !other->blocking || !(st.legacy || other->legacy) || !st.blocking) continue;
        if (other->last && !other->last->done) w->after.push_back(other->last);
        join(st.clock, other->clock);
    }
    join(st.clock, s.host);
    if (st.clock.size() <= (size_t)st.id) st.clock.resize(st.id + 1, 0);
    ++st.clock[st.id];
    w->clock = st.clock;
    st.queue.push_back(w);
    st.last = w;
    return w;
}

WorkPtr make_work(std::string label, std::vector<DeviceAccess> accesses, std::function<int()> run) {
    auto w = std::make_shared<Work>();
    w->label = std::make_shared<const std::string>(std::move(label));
    w->accesses = std::move(accesses);
    w->run = std::move(run);
    return w;
}

// Runs what the new work needs now: all of it on the legacy stream and under seed 0.
void after_submit(Scheduler& s, Stream& st, const WorkPtr& w, bool host_waits) {
    if (host_waits || st.legacy || current_seed() == 0) {
        run_until(s, [&] { return w->done; });
    } else {
        progress_a_little(s);
    }
    if (host_waits) join(s.host, w->clock);
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct StreamEvent {
    WorkPtr marker;  // its latest cuEventRecord; null: never recorded
    Clock clock;
    std::shared_ptr<double> ms;  // when the marker ran
};

bool watching_accesses() { return race_check_enabled.load() && sched().watching; }

void note_access(uintptr_t lo, uintptr_t hi, bool write, bool whole) {
    if (running && lo < hi) running->accesses.push_back(DeviceAccess{lo, hi, write, whole});
}

int submit_work(void* stream, std::string label, std::vector<DeviceAccess> accesses, std::function<int()> run,
                bool host_waits) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = live_stream(s, stream, label.c_str());
    if (!st) return kInvalidHandle;
    note_concurrency(s, st);
    WorkPtr w = enqueue(s, *st, make_work(std::move(label), std::move(accesses), std::move(run)), nullptr, nullptr);
    after_submit(s, *st, w, host_waits);
    return take_pending(s);
}

int create_stream(void** out, unsigned flags) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = new Stream{s.next_id++, false, (flags & 1) == 0, {}, nullptr, {}};
    s.streams.push_back(st);
    s.handles.insert(st);
    *out = st;
    return 0;
}

int destroy_stream(void* stream) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = resolve(s, stream);
    if (!st || st->legacy) {
        set_error(kInvalidHandle, format("cuStreamDestroy: %p is not a stream this context created", stream));
        return kInvalidHandle;
    }
    // CUDA lets queued work finish after the destroy; here it finishes first. Work the host never
    // waited for stays unordered with what other streams do next.
    run_until(s, [&] { return st->queue.empty(); });
    if (unsettled(s, *st)) s.watching = true;
    s.streams.erase(std::find(s.streams.begin(), s.streams.end(), st));
    s.handles.erase(st);
    delete st;
    return take_pending(s);
}

int synchronize_stream(void* stream) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = live_stream(s, stream, "cuStreamSynchronize");
    if (!st) return kInvalidHandle;
    run_until(s, [&] { return st->queue.empty(); });
    join(s.host, st->clock);
    return take_pending(s);
}

int query_stream(void* stream) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = live_stream(s, stream, "cuStreamQuery");
    if (!st) return kInvalidHandle;
    progress_a_little(s);
    if (const int r = take_pending(s)) return r;
    if (!st->queue.empty()) return kNotReady;
    join(s.host, st->clock);
    return 0;
}

int synchronize_all(bool host_ordered) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    run_until(s, [&] {
        return std::all_of(s.streams.begin(), s.streams.end(), [](const Stream* st) { return st->queue.empty(); });
    });
    if (host_ordered)
        for (const Stream* st : s.streams) join(s.host, st->clock);
    return take_pending(s);
}

void forget_accesses(uintptr_t base) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    s.history.erase(base);
}

StreamEvent* create_event() { return new StreamEvent{nullptr, {}, std::make_shared<double>(0.0)}; }

int record_event(StreamEvent* e, void* stream) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = live_stream(s, stream, "cuEventRecord");
    if (!st) return kInvalidHandle;
    // A fresh clock cell per record: a later record does not change what earlier waits wait for.
    auto ms = std::make_shared<double>(0.0);
    WorkPtr w = enqueue(s, *st, make_work("cuEventRecord", {}, [ms] {
                            *ms = now_ms();
                            return 0;
                        }),
                        nullptr, nullptr);
    e->marker = w;
    e->clock = w->clock;
    e->ms = ms;
    after_submit(s, *st, w, false);
    return take_pending(s);
}

int wait_event(void* stream, StreamEvent* e) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    Stream* st = live_stream(s, stream, "cuStreamWaitEvent");
    if (!st) return kInvalidHandle;
    if (!e->marker) return 0;  // never recorded: nothing to wait for, as in CUDA
    WorkPtr w = enqueue(s, *st, make_work("cuStreamWaitEvent", {}, [] { return 0; }), e->marker, &e->clock);
    after_submit(s, *st, w, false);
    return take_pending(s);
}

int synchronize_event(StreamEvent* e) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    if (e->marker) {
        WorkPtr m = e->marker;
        run_until(s, [&] { return m->done; });
        join(s.host, e->clock);
    }
    return take_pending(s);
}

int query_event(StreamEvent* e) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    progress_a_little(s);
    if (const int r = take_pending(s)) return r;
    if (e->marker && !e->marker->done) return kNotReady;
    join(s.host, e->clock);
    return 0;
}

int elapsed_ms(float* ms, StreamEvent* start, StreamEvent* end) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    if (!start->marker || !end->marker) {
        set_error(kInvalidHandle, "cuEventElapsedTime: an event that was never recorded");
        return kInvalidHandle;
    }
    if (!start->marker->done || !end->marker->done) return kNotReady;
    *ms = (float)(*end->ms - *start->ms);
    return 0;
}

void destroy_event(StreamEvent* e) {
    Scheduler& s = sched();
    std::lock_guard<std::recursive_mutex> g(s.lock);
    delete e;  // a pending marker keeps its own clock cell
}

}  // namespace emu
