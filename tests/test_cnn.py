"""The CPU kernel's VALID convolution: same values and gradients as lax/flax convolution, in and
out of loops; and the Nature CNN."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from angle_jax.networks.cnn import NatureCNN
from angle_jax.xla_cpu import CPU, conv2d_valid


def reference(x, kernel, stride):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class TestConv2dValid(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((84, 4, 8, 8, 4), (20, 6, 5, 4, 2), (9, 3, 4, 3, 1),
                              (23, 2, 3, 5, 3))  # 23: (H - k) not a multiple of the stride
    def test_values_and_gradients_match_lax(self, size, cin, cout, k, stride):
        kx, kk, ky = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(kx, (3, size, size, cin))
        kernel = jax.random.normal(kk, (k, k, cin, cout)) * 0.1
        out_size = (size - k) // stride + 1
        weights = jax.random.normal(ky, (3, out_size, out_size, cout))

        def loss(conv):
            return lambda x, w: jnp.sum(weights * jnp.tanh(conv(x, w, stride)))

        ours = self.variant(jax.value_and_grad(loss(conv2d_valid), argnums=(0, 1)))(x, kernel)
        ref = jax.value_and_grad(loss(reference), argnums=(0, 1))(x, kernel)
        chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_inside_scan_matches_and_layer_matches_flax():
    """`nn.Conv` applied through the CPU kernels' interceptor (`conv2d_valid`) against plain flax."""
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 84, 84, 4))
    theirs = nn.Conv(16, (8, 8), strides=(4, 4), padding="VALID")
    params = theirs.init(jax.random.PRNGKey(2), x)
    ours = CPU.bind(theirs.apply)
    traced = jax.make_jaxpr(ours)(params, x)
    assert "custom_vjp_call" in str(traced)  # the kernel is the one applied
    np.testing.assert_allclose(ours(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)

    def sgd(apply):
        def body(p, _):
            g = jax.grad(lambda p: jnp.mean(apply(p, x) ** 2))(p)
            return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None
        return jax.jit(lambda p: jax.lax.scan(body, p, None, length=3)[0])

    chex.assert_trees_all_close(sgd(ours)(params), sgd(theirs.apply)(params), rtol=1e-4, atol=1e-5)


def test_nature_cnn_shapes_uint8_and_leading_axes():
    obs = jnp.zeros((2, 3, 4, 84, 84), jnp.uint8)
    net = NatureCNN(features=32)
    params = net.init(jax.random.PRNGKey(0), obs)
    out = net.apply(params, obs)
    chex.assert_shape(out, (2, 3, 32))
    assert out.dtype == jnp.float32
