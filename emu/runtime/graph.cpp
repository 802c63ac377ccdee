// Stream capture and CUDA graphs on the CPU, per host thread. cuStreamBeginCapture opens a recording: kernel
// launches (with a copy of their parameter values, as CUDA bakes them into the graph), memsets,
// device-to-device copies and the cuBLASLt stand-in's matmuls become nodes instead of running.
// cuStreamEndCapture hands the nodes over as a graph; cuGraphLaunch puts one piece of work on its
// stream (streams.cpp) that replays them in order, each launch counted and checked as an eager one
// is, and the race check sees what all of them touched as the graph launch's. What CUDA refuses during capture (host copies,
// allocations, synchronisation) is refused here too, with the operation named.
#include "runtime.h"

namespace emu {

constexpr int kStreamCaptureUnsupported = 900, kStreamCaptureInvalidated = 901;

struct Graph {
    std::vector<std::function<int()>> nodes;
};

namespace {
// A capture belongs to the host thread that opened it (each thread drives its own stream), as
// CU_STREAM_CAPTURE_MODE_THREAD_LOCAL has it: other threads' work runs as usual meanwhile.
thread_local Graph* open_capture = nullptr;
}  // namespace

bool capturing() { return open_capture != nullptr; }

void capture_node(std::function<int()> node) { open_capture->nodes.push_back(std::move(node)); }

int refuse_in_capture(const char* op) {
    if (!capturing()) return 0;
    set_error(kStreamCaptureUnsupported,
              format("%s is not permitted while a stream is being captured into a CUDA graph (do it before "
                     "cuStreamBeginCapture, or replay it from device memory)",
                     op));
    return kStreamCaptureUnsupported;
}

}  // namespace emu

using namespace emu;

typedef int CUresult;
typedef void* CUstream;
typedef Graph* CUgraph;
struct GraphExec {
    std::shared_ptr<const Graph> graph;  // shared with replays still queued
};
typedef GraphExec* CUgraphExec;

extern "C" {

CUresult cuStreamBeginCapture_v2(CUstream stream, int) {
    // The legacy default stream synchronises implicitly with every blocking stream, so CUDA refuses to
    // capture it (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED): a graph needs a stream of its own.
    if (stream == nullptr || stream == reinterpret_cast<CUstream>(0x1)) {
        set_error(kStreamCaptureUnsupported,
                  "cuStreamBeginCapture: the legacy default stream cannot be captured (operation not permitted "
                  "when stream is capturing); capture a stream made by cuStreamCreate");
        return kStreamCaptureUnsupported;
    }
    if (open_capture) {
        set_error(kStreamCaptureUnsupported, "cuStreamBeginCapture: a capture is already open");
        return kStreamCaptureUnsupported;
    }
    open_capture = new Graph{};
    return 0;
}

CUresult cuStreamEndCapture(CUstream, CUgraph* out) {
    if (!open_capture) {
        set_error(kStreamCaptureInvalidated, "cuStreamEndCapture: no capture is open");
        return kStreamCaptureInvalidated;
    }
    *out = open_capture;
    open_capture = nullptr;
    return 0;
}

CUresult cuStreamIsCapturing(CUstream, int* status) {
    *status = capturing() ? 1 : 0;  // CU_STREAM_CAPTURE_STATUS_ACTIVE : NONE
    return 0;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long) {
    if (!graph) {
        set_error(kInvalidValue, "cuGraphInstantiate: null graph");
        return kInvalidValue;
    }
    *exec = new GraphExec{std::make_shared<const Graph>(*graph)};
    return 0;
}

CUresult cuGraphLaunch(CUgraphExec exec, CUstream stream) {
    if (CUresult r = refuse_in_capture("cuGraphLaunch")) return r;
    std::shared_ptr<const Graph> graph = exec->graph;
    return submit_work(stream, format("graph launch (%zu nodes)", graph->nodes.size()), {}, [graph]() {
        for (auto& node : graph->nodes)
            if (CUresult r = node()) return r;
        return 0;
    }, false);
}

CUresult cuGraphUpload(CUgraphExec, CUstream) { return 0; }
CUresult cuGraphExecDestroy(CUgraphExec exec) {
    delete exec;
    return 0;
}
CUresult cuGraphDestroy(CUgraph graph) {
    delete graph;
    return 0;
}

}  // extern "C"
