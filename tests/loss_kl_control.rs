mod loss_support;

use loss_support::assert_close;
use prefer::loss::KlController;

#[test]
fn fixed_controller_never_moves() {
    let mut controller = KlController::default();
    assert_eq!(controller, KlController::Fixed { coef: 0.05 });
    controller.update(100.0, 64);
    assert_eq!(controller.coef(), 0.05);
}

fn adaptive() -> KlController {
    KlController::Adaptive {
        coef: 0.2,
        target: 6.0,
        horizon: 10_000,
    }
}

#[test]
fn adaptive_controller_follows_ziegler() {
    // KL = 9: e = clip(9/6 − 1 = 0.5) = 0.2 → β = 0.2 (1 + 0.2 · 256/10000) = 0.201024
    let mut controller = adaptive();
    controller.update(9.0, 256);
    assert_close(controller.coef(), 0.201_024, 1e-7, "too much KL");
    // KL = 5.4: e = 5.4/6 − 1 = −0.1 → β = 0.2 (1 − 0.1 · 0.0256) = 0.199488
    let mut controller = adaptive();
    controller.update(5.4, 256);
    assert_close(controller.coef(), 0.199_488, 1e-7, "a bit too little KL");
    // KL = 0: e = clip(−1) = −0.2 → β = 0.2 (1 − 0.2 · 0.0256) = 0.198976
    let mut controller = adaptive();
    controller.update(0.0, 256);
    assert_close(controller.coef(), 0.198_976, 1e-7, "no KL");
    // on target: β unchanged
    let mut controller = adaptive();
    controller.update(6.0, 256);
    assert_eq!(controller.coef(), 0.2);
}

#[test]
fn adaptive_updates_compound() {
    // two updates at e = 0.2 with n/horizon = 0.5: β = 1 · 1.1 · 1.1 = 1.21
    let mut controller = KlController::Adaptive {
        coef: 1.0,
        target: 1.0,
        horizon: 2,
    };
    controller.update(10.0, 1);
    controller.update(10.0, 1);
    assert_close(controller.coef(), 1.21, 1e-6, "compounded");
}
