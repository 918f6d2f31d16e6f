"""A photo's GPS EXIF, read with Pillow, and the place it names through the offline gazetteer."""
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from pipelines.images import load_image
from pipelines.places import GPS_IFD, gps_position, photo_places, place_names

EIFFEL = (48.8584, 2.2945)


def with_gps(path: Path, gps: dict, image: Image.Image | None = None) -> Path:
    """A JPEG whose GPS IFD holds `gps` (tag -> value, written as Pillow writes them, odd values included)."""
    exif = Image.Exif()
    exif.get_ifd(GPS_IFD).update(gps)
    (image or Image.new("RGB", (64, 48), (120, 60, 30))).save(path, exif=exif)
    return path


def exiftool_gps(path: Path, lat: float, lon: float) -> Path:
    """GPS written by exiftool, as photo software writes it (rationals, N/S and E/W refs)."""
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool is not installed")
    subprocess.run(["exiftool", "-q", "-overwrite_original", f"-GPSLatitude={abs(lat)}", f"-GPSLatitudeRef={'N' if lat >= 0 else 'S'}",
                    f"-GPSLongitude={abs(lon)}", f"-GPSLongitudeRef={'E' if lon >= 0 else 'W'}", str(path)], check=True)
    return path


def test_a_position_written_by_exiftool_is_read_with_its_hemispheres(tmp_path):
    for lat, lon in (EIFFEL, (-33.8568, 151.2153), (40.758, -73.9855), (-22.9519, -43.2105)):
        path = tmp_path / f"{lat}_{lon}.jpg"
        Image.new("RGB", (64, 48), "teal").save(path)
        got = gps_position(load_image(exiftool_gps(path, lat, lon)))
        assert got == pytest.approx((lat, lon), abs=1e-5)


def test_the_position_survives_decoding_a_rotated_grey_photo(tmp_path):
    """decode_image applies the EXIF orientation and converts to RGB: the GPS tags must still be there."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (48.0, 51.0, 30.24), 3: "E", 4: (2.0, 17.0, 40.2)})
    path = tmp_path / "rotated.jpg"
    Image.new("L", (64, 48), 90).save(path, exif=exif)
    im = load_image(path)
    assert im.size == (48, 64) and im.mode == "RGB"
    assert gps_position(im) == pytest.approx(EIFFEL, abs=1e-4)


@pytest.mark.parametrize("gps", [
    {},  # none
    {1: "N", 2: (48.0, 51.0, 30.0), 4: (2.0, 17.0, 40.0)},  # no longitude ref
    {1: "X", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)},  # a hemisphere that is none
    {1: "N", 2: (IFDRational(48, 0), 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)},  # a zero denominator
    {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (2.0, 17.0, 40.0)},  # past the pole
    {1: "N", 2: (48.0, 75.0, 0.0), 3: "E", 4: (2.0, 17.0, 40.0)},  # 75 minutes
    {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},  # what a camera without a fix writes
    {1: "N", 2: (48.0, 51.0, 30.0, 1.0), 3: "E", 4: (2.0, 17.0, 40.0)},  # four numbers
    {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0), 9: "V"},  # the receiver says: void
])
def test_missing_or_malformed_gps_is_no_position(tmp_path, gps):
    assert gps_position(load_image(with_gps(tmp_path / "p.jpg", gps))) is None


def test_a_broken_gps_pointer_is_no_position_and_the_photo_still_decodes(tmp_path):
    path = with_gps(tmp_path / "p.jpg", {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    data = bytearray(path.read_bytes())
    at = data.find(b"\x88\x25")  # the GPS IFD pointer's tag in the EXIF block (little or big endian)
    at = at if at >= 0 else data.find(b"\x25\x88")
    data[at + 8:at + 12] = b"\xff\xff\xff\x7f"  # its offset, far past the end of the block
    path.write_bytes(bytes(data))
    im = load_image(path)
    assert gps_position(im) is None and photo_places(im) == ()


def test_positions_name_the_city_they_are_in_and_its_country():
    assert place_names(*EIFFEL) == ("paris", "france")  # nearer Vanves' centre than Paris', but in Paris
    assert place_names(40.758, -73.9855) == ("newyorkcity", "unitedstates")  # Times Square, not the district
    assert place_names(51.5007, -0.1246) == ("london", "unitedkingdom")  # Westminster
    assert place_names(40.7357, -74.1724)[0] == "newark"  # a city of its own beside New York
    assert place_names(37.5665, 126.978) == ("seoul", "southkorea")  # countries by their common names


def test_far_from_any_place_there_is_no_name():
    assert place_names(30.0, -40.0) == ()  # the middle of the Atlantic
    assert place_names(-85.0, 0.0) == ()  # Antarctica's interior


def test_a_photo_without_gps_has_no_places(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (64, 48), "teal").save(path)
    assert photo_places(load_image(path)) == ()
    assert photo_places(load_image(exiftool_gps(path, *EIFFEL))) == ("paris", "france")
