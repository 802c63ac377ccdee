//! src/dist/nccl.rs in one process on the software GPU: the stand-in NCCL opened by path, a
//! communicator of one rank, a sum on the communication stream ordered by events against the
//! compute stream's work before and after it (the cross-stream race check is on).

mod common;

#[test]
fn a_one_rank_communicator_sums_in_stream_order() {
    if !common::emu_available() {
        return;
    }
    prefer::emu::activate().unwrap();
    let eng = prefer::ops::cuda::CudaEngine::new().unwrap();
    let group = prefer::dist::group::Group::single();
    let mut comm = prefer::dist::nccl::DeviceComm::new(&group, &eng).unwrap();
    assert_eq!((comm.rank(), comm.size()), (0, 1));
    // Registered for abort_all and the watchdog, which finds nothing wrong.
    assert_eq!(prefer::dist::nccl::live_communicators(), 1);
    assert_eq!(prefer::dist::nccl::first_async_error(), None);
    let host: Vec<f32> = (0..3000).map(|i| i as f32 * 0.25 - 9.0).collect();
    // Written on the compute stream, summed on the communication stream, read back on the
    // compute stream: each hand-over is an event, or the race check fails the copy.
    let mut buf = eng.upload(&host).unwrap();
    comm.all_reduce_sum(&mut buf).unwrap();
    assert_eq!(eng.download(&buf).unwrap(), host);
    let mut out = eng.zeros::<f32>(host.len()).unwrap();
    comm.reduce_scatter_sum(&buf, &mut out).unwrap();
    let mut gathered = eng.zeros::<f32>(host.len()).unwrap();
    comm.all_gather(&out, &mut gathered).unwrap();
    comm.broadcast(&mut gathered, 0).unwrap();
    assert_eq!(eng.download(&gathered).unwrap(), host);
    comm.async_error().unwrap();
    // Sizes that cannot fit the ranks are refused before anything is queued.
    let mut short = eng.zeros::<f32>(7).unwrap();
    let err = comm.all_gather(&buf, &mut short).unwrap_err();
    assert!(format!("{err:#}").contains("ncclAllGather: 3000 values in, 7 out over 1 ranks"));
    drop(comm);
    assert_eq!(prefer::dist::nccl::live_communicators(), 0, "destroyed");
}
