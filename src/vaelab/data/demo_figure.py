"""One figure of the built-in figure set (`demo.py`): a person as a list of flat shapes, and their painting.

A pose is joint angles; forward kinematics turns them into shapes in figure units (standing
height 1, pelvis at 0,0), and `paint` draws the shapes at an image's scale with two-tone shading.
Any change here that changes pixels must bump `demo.VERSION`, so that cached renders are redone.
"""

from __future__ import annotations

import math

# Joint angles in degrees, 0 = pointing down. Each entry: (torso lean, two arms as
# (shoulder, elbow), two legs as (hip, knee, thigh length scale, shin length scale)).
# Front view: angles point outward, mirrored for the two sides; a length scale < 1 is a
# limb foreshortened toward or away from the camera. Side view: positive = forward,
# the first limb is the far one; knees bend backward (negative), elbows forward.
POSE_ANGLES = {
    "standing": {"front": (0, ((12, 5), (12, 5)), ((3, 0, 1, 1), (3, 0, 1, 1))),
                 "side": (0, ((-6, 10), (8, 10)), ((-3, 0, 1, 1), (3, 0, 1, 1)))},
    "walking": {"front": (0, ((14, 10), (6, 25)), ((4, 0, 1, 1), (2, -15, 0.95, 0.85))),
                "side": (4, ((28, 15), (-28, 10)), ((-22, -25, 1, 1), (25, -5, 1, 1)))},
    "sitting": {"front": (0, ((8, -25), (8, -25)), ((40, -40, 0.3, 1), (40, -40, 0.3, 1))),
                "side": (-4, ((15, 45), (20, 50)), ((85, -85, 1, 1), (88, -88, 1, 1)))},
    "reaching": {"front": (0, ((155, -20), (155, -20)), ((5, 0, 1, 1), (5, 0, 1, 1))),
                 "side": (0, ((165, 10), (175, 5)), ((-3, 0, 1, 1), (3, 0, 1, 1)))},
    "kneeling": {"front": (0, ((12, 10), (12, 10)), ((6, 75, 1, 0.35), (6, 75, 1, 0.35))),
                 "side": (0, ((10, 30), (15, 35)), ((10, -100, 1, 1), (5, -95, 1, 1)))},
}


# -----------------------------------------------------------------------------
# One figure as a list of shapes in figure units (standing height 1, pelvis at 0,0)

def direction(deg):
    a = math.radians(deg)
    return math.sin(a), math.cos(a)  # image coordinates: y points down


def add(p, v, k=1.0):
    return p[0] + v[0] * k, p[1] + v[1] * k


def build_figure(rng, model, pose, view, facing, clothes, holding, stool):
    """Forward kinematics from joint angles -> shapes in paint order.

    A shape is (kind, geometry, colour, is_person, shade): "cap" is a capsule (p0, p1, radius),
    "poly" a polygon [points], "ell" an ellipse (centre, (rx, ry)). is_person says whether the
    shape counts for the person box (a stool does not).
    """
    lean, arms, legs = POSE_ANGLES[pose][view]
    jit = lambda: float(rng.normal(0, 4))  # noqa: E731 - small natural variation
    b = model["build"]
    skin, top, bottom, shoes = model["skin"], clothes["top"], clothes["bottom"], clothes["shoes"]
    sides = (-1, 1) if view == "front" else (facing, facing)
    shapes = []
    cap = lambda p0, p1, r, c, shade=1.0: shapes.append(("cap", (p0, p1, r), c, True, shade))  # noqa: E731

    pelvis = (0.0, 0.0)
    up = direction(180 - facing * (lean + jit()) if view == "side" else 180 + jit() / 2)
    across = (-up[1], up[0])  # perpendicular to the spine, pointing to image right
    neck = add(pelvis, up, 0.30)
    sw, hw = (0.115 * b, 0.055 * b) if view == "front" else (0.02, 0.0)
    shoulders = [add(add(neck, up, -0.03), across, s * sw) for s in (-1, 1)]
    hips = [add(pelvis, across, s * hw) for s in (-1, 1)]

    # legs first: torso and skirt cover their tops
    feet_y = 0.0
    leg_shapes = []
    for i, (hip_a, knee_a, ts, ss) in enumerate(legs):
        s = sides[i]
        thigh_deg = s * (hip_a + jit())
        knee = add(hips[i], direction(thigh_deg), 0.245 * ts)
        ankle = add(knee, direction(thigh_deg + s * (knee_a + jit())), 0.235 * ss)
        toe = add(ankle, (s * 0.02, 0.03) if view == "front" else (facing * 0.07, 0.01))
        shade = 0.8 if (view == "side" and i == 0) else 1.0  # the far leg is in shadow
        lower = skin if clothes["style"] in ("shorts", "skirt") else bottom
        upper = skin if clothes["style"] == "skirt" else bottom
        leg_shapes.append([(hips[i], knee, 0.048 * b, upper, shade),
                           (knee, ankle, 0.036 * b, lower, shade),
                           (ankle, toe, 0.028, shoes, shade)])
        feet_y = max(feet_y, ankle[1] + 0.036 * b, toe[1] + 0.028)
    if stool:  # the seat is under the pelvis and stands on the floor, level with the feet
        x0, x1 = (-0.18, 0.18) if view == "front" else sorted((-0.1 * facing, 0.14 * facing))
        shapes.append(("poly", [(x0, 0.04), (x1, 0.04), (x1, feet_y), (x0, feet_y)], stool, False, 1.0))
    if model["long_hair"]:  # hair falls behind the shoulders, so it goes before the torso
        back = -0.02 * facing if view == "side" else 0.0
        cap(add(neck, (back, -0.11)), add(neck, (back, 0.02)), 0.062, model["hair"], 0.9)
    # arms: in side view the far arm is behind the torso
    arm_shapes = []
    for i, (sh_a, el_a) in enumerate(arms):
        s = sides[i]
        upper_deg = s * (sh_a + jit())
        elbow = add(shoulders[i], direction(upper_deg), 0.17)
        wrist = add(elbow, direction(upper_deg + s * (el_a + jit())), 0.15)
        shade = 0.8 if (view == "side" and i == 0) else 1.0
        fore = top if clothes["long_sleeves"] else skin
        arm_shapes.append([(shoulders[i], elbow, 0.034 * b, top, shade),
                           (elbow, wrist, 0.027 * b, fore, shade),
                           (wrist, add(wrist, direction(upper_deg), 0.035), 0.03, skin, shade)])
    for seg in (arm_shapes[0] if view == "side" else []) + leg_shapes[0] + leg_shapes[1]:
        cap(*seg)

    # torso: a polygon along the spine, wide at the shoulders, narrow at the waist
    wide = (0.125 * b, 0.09 * b, 0.10 * b) if view == "front" else (0.075, 0.065, 0.075)
    rows = [(0.30, wide[0] * 0.8), (0.27, wide[0]), (0.15, wide[1]), (-0.04, wide[2])]
    outline = [add(add(pelvis, up, t), across, -w) for t, w in rows]
    outline += [add(add(pelvis, up, t), across, w) for t, w in reversed(rows)]
    cap(neck, add(neck, up, 0.06), 0.028 * b, skin)  # neck, under the collar
    shapes.append(("poly", outline, top, True, 1.0))
    if clothes["style"] == "skirt":  # hangs straight down from the hips
        half = 0.16 * b if view == "front" else 0.13
        hem = 0.26 + jit() / 200
        shapes.append(("poly", [(-wide[2], -0.02), (wide[2], -0.02), (half, hem), (-half, hem)],
                       bottom, True, 1.0))
    for seg in arm_shapes[1] if view == "side" else arm_shapes[0] + arm_shapes[1]:
        cap(*seg)

    # head: hair behind, face in front, eyes for a hint of where the person looks
    head = add(neck, up, 0.06 + 0.065)
    hair_dx = -0.012 * facing if view == "side" else 0.0
    shapes.append(("ell", (add(head, (hair_dx, -0.01)), (0.056, 0.07)), model["hair"], True, 1.0))
    face_dx = 0.01 * facing if view == "side" else 0.0
    shapes.append(("ell", (add(head, (face_dx, 0.012)), (0.048, 0.056)), skin, True, 1.0))
    eyes = [(-0.018, 0.005), (0.018, 0.005)] if view == "front" else [(0.03 * facing, 0.005)]
    for dx, dy in eyes:
        shapes.append(("ell", (add(head, (dx + face_dx, dy)), (0.006, 0.006)), (40, 30, 30), False, 1.0))

    if holding:  # in the image-right hand (the near hand in side view)
        hand = arm_shapes[1][2][1]
        if holding == "ball" or hand[1] < pelvis[1] - 0.15:  # a raised hand holds a ball
            shapes.append(("ell", (add(hand, (0, 0.03)), (0.05, 0.05)), clothes["object"], True, 1.0))
        else:  # a bag hangs from the hand by its strap
            cap(hand, add(hand, (0, 0.04)), 0.008, (40, 35, 30))
            x, y = hand[0], hand[1] + 0.04
            shapes.append(("poly", [(x - 0.06, y), (x + 0.06, y), (x + 0.065, y + 0.1),
                                    (x - 0.065, y + 0.1)], clothes["object"], True, 1.0))
    return shapes


def person_bounds(shapes):
    xs, ys = [], []
    for kind, geom, _, person, _ in shapes:
        if not person:
            continue
        if kind == "cap":
            (p0, p1, r) = geom
            xs += [p0[0] - r, p0[0] + r, p1[0] - r, p1[0] + r]
            ys += [p0[1] - r, p0[1] + r, p1[1] - r, p1[1] + r]
        elif kind == "poly":
            xs += [p[0] for p in geom]
            ys += [p[1] for p in geom]
        else:
            (cx, cy), (rx, ry) = geom
            xs += [cx - rx, cx + rx]
            ys += [cy - ry, cy + ry]
    return min(xs), min(ys), max(xs), max(ys)


def scaled(c, k):
    return tuple(min(255, max(0, int(v * k))) for v in c)


def paint(draw, shapes, scale, offset, light):
    """Two-tone shading: the whole shape in shadow, then a lit copy nudged toward the light."""
    ox, oy = offset
    px = lambda p: (p[0] * scale + ox, p[1] * scale + oy)  # noqa: E731
    nudge = (light * 0.3, -0.12)  # toward the light and a little up, in units of the radius
    for kind, geom, colour, _, shade in shapes:
        dark, lit = scaled(colour, 0.72 * shade), scaled(colour, shade)
        if kind == "cap":
            p0, p1, r = px(geom[0]), px(geom[1]), geom[2] * scale
            for c, k, dx, dy in ((dark, 1.0, 0, 0), (lit, 0.72, nudge[0] * r, nudge[1] * r)):
                q0, q1, rr = (p0[0] + dx, p0[1] + dy), (p1[0] + dx, p1[1] + dy), r * k
                draw.line([q0, q1], fill=c, width=max(1, round(2 * rr)))
                for q in (q0, q1):
                    draw.ellipse([q[0] - rr, q[1] - rr, q[0] + rr, q[1] + rr], fill=c)
        elif kind == "poly":
            pts = [px(p) for p in geom]
            draw.polygon(pts, fill=dark)
            cx = sum(p[0] for p in pts) / len(pts)
            width = max(p[0] for p in pts) - min(p[0] for p in pts)
            shift = light * 0.1 * width
            draw.polygon([(cx + (x - cx) * 0.8 + shift, y) for x, y in pts], fill=lit)
        else:
            (cx, cy), (rx, ry) = px(geom[0]), (geom[1][0] * scale, geom[1][1] * scale)
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=lit)


def shift_geom(kind, geom, dx):
    """A shape's geometry moved dx figure units to the right: each person is placed right of the previous one."""
    mv = lambda p: (p[0] + dx, p[1])  # noqa: E731
    if kind == "cap":
        return mv(geom[0]), mv(geom[1]), geom[2]
    if kind == "poly":
        return [mv(p) for p in geom]
    return mv(geom[0]), geom[1]
